"""The tracker agent's batch function: envelopes in, staged outputs and table writes out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from agents import tracker
from agents.ingest import envelope_row
from app import topics
from app.transaction import Batch, _apply_to_stores

ENVELOPES = topics.events_by_sku.get_topic_name()
ORDERS = topics.orders.get_topic_name()
STOCK = topics.stock.get_topic_name()
SKU = "T-1"
P = topics.sku_partition(SKU)
T0 = 1_795_694_400  # 2026-11-26T12:00:00Z


def order(oid: str, qty: int, ts: float, sku: str = SKU) -> tuple[str, dict[str, Any]]:
    return ORDERS, {
        "order_id": oid,
        "customer_id": "c",
        "sku": sku,
        "quantity": qty,
        "unit_price": 2.5,
        "ts": ts,
    }


def delivery(eid: str, qty: int, ts: float) -> tuple[str, dict[str, Any]]:
    return STOCK, {"event_id": eid, "sku": SKU, "reason": "delivery", "quantity": qty, "ts": ts}


class Feed:
    """Envelopes for one SKU partition, as ingest writes them, with growing offsets."""

    def __init__(self) -> None:
        self.input_offset = {ORDERS: 0, STOCK: 0}
        self.envelope_offset = 0

    def envelope(self, *events: tuple[str, dict[str, Any]], replay_of: Any = None) -> Any:
        rows = []
        for topic, value in events:
            offset = self.input_offset[topic]
            self.input_offset[topic] += 1
            _, row = envelope_row(topic == ORDERS, offset, orjson.dumps(value))
            rows.append([*row, 0])  # input partition 0
        # What the batch tap hands the tracker: a raw aiokafka record.
        record = SimpleNamespace(
            topic=ENVELOPES,
            partition=P,
            offset=self.envelope_offset,
            value=orjson.dumps(rows) if replay_of is None else replay_of.value,
        )
        self.envelope_offset += 1
        return record


def run(*records: Any) -> Batch:
    """Process one batch and write it to the tables, as a committed transaction does."""
    rt = tracker._runtimes.setdefault(P, tracker.rebuild(P))
    proc = tracker.start(rt)
    for record in records:
        tracker.apply(proc, record)
    batch = tracker.finish(proc)
    list(_apply_to_stores(batch))
    return batch


def out(batch: Batch, topic: Any) -> list[Any]:
    name = topic.get_topic_name()
    return [orjson.loads(v) for t, _, v, _ in batch.outputs if t == name]


def test_a_delivery_and_orders_move_the_level_and_raise_a_supplier_order() -> None:
    feed = Feed()
    batch = run(
        feed.envelope(delivery("d1", 10, T0), order("o1", 4, T0 + 1), order("o2", 9, T0 + 2))
    )
    statuses = out(batch, topics.order_status)
    assert [
        (s["order_id"], s["status"], s["backordered_units"], s["level_after"]) for s in statuses
    ] == [
        ("o1", "allocated", 0, 6),
        ("o2", "backordered", 3, -3),
    ]
    assert [lv["level"] for lv in out(batch, topics.stock_levels)] == [10, 6, -3]
    # The delivery leaves 10 < 20: a supplier order for 90; later orders do not add one.
    assert [
        (so["supplier_order_id"], so["quantity"], so["status"])
        for so in out(batch, topics.supplier_orders)
    ] == [(f"SO-{SKU}-1", 90, "open")]
    assert batch.sources == {TP(ENVELOPES, P): 1}
    assert batch.table_partition == P
    state = orjson.loads(tracker.get(tracker.sku_state, SKU.encode(), P) or b"null")
    assert state["level"] == -3 and state["as_of"]["offset"] == 1


def test_each_key_is_written_once_per_batch() -> None:
    feed = Feed()
    batch = run(feed.envelope(*(order(f"o{i}", 1, T0 + i) for i in range(50))))
    keys = [(table.name, key) for table, key in batch.table_writes]
    assert len(keys) == len(set(keys))
    assert sum(1 for name, key in keys if name == tracker.sku_state.name) == 1


def test_a_duplicate_order_changes_nothing_and_is_counted() -> None:
    feed = Feed()
    run(feed.envelope(order("o1", 2, T0)))
    batch = run(feed.envelope(order("o1", 2, T0 + 5)))
    assert out(batch, topics.order_status) == [] and out(batch, topics.stock_levels) == []
    assert tracker._runtimes[P].counters["duplicates"] == 1
    assert orjson.loads(tracker.get(tracker.sku_state, SKU.encode(), P) or b"{}")["level"] == -2


def test_a_redelivered_envelope_is_skipped_not_applied_twice() -> None:
    feed = Feed()
    first = feed.envelope(order("o1", 2, T0), order("o2", 1, T0 + 1))
    run(first)
    again = run(feed.envelope(replay_of=first))
    assert again.outputs == []
    rt = tracker._runtimes[P]
    assert rt.counters["replayed"] == 2 and rt.counters["duplicates"] == 0


def test_windows_close_on_stream_time_once_and_late_orders_only_count_as_late() -> None:
    feed = Feed()
    run(feed.envelope(order("o1", 1, T0 + 5), order("o2", 2, T0 + 30)))
    # Stream time reaches 12:01:10 = end of [12:00, 12:01) + 10 s grace: it closes.
    batch = run(feed.envelope(order("o3", 1, T0 + 70)))
    results = [r for r in out(batch, topics.window_results) if r["kind"] == "tumbling"]
    assert results == [
        {
            "sku": SKU,
            "kind": "tumbling",
            "window_start": "2026-11-26T12:00:00Z",
            "window_end": "2026-11-26T12:01:00Z",
            "orders": 2,
            "units": 3,
            "revenue": 7.5,
        }
    ]
    late = run(feed.envelope(order("o4", 1, T0 + 10)))
    assert [r for r in out(late, topics.window_results) if r["kind"] == "tumbling"] == []
    assert tracker._runtimes[P].counters["late_orders"] == 1
    # Late for its closed tumbling window, yet the level still moves.
    assert [lv["level"] for lv in out(late, topics.stock_levels)] == [-5]


def test_an_expedite_names_the_open_supplier_order_once_per_hopping_window() -> None:
    feed = Feed()
    batch = run(feed.envelope(*(order(f"o{i}", 1, T0 + i) for i in range(5))))
    expedites = out(batch, topics.expedites)
    # Threshold 2: the third order in a hopping window expedites it, once per window.
    assert expedites and all(e["orders"] == 3 for e in expedites)
    assert len({e["window_start"] for e in expedites}) == len(expedites)
    assert {e["supplier_order_id"] for e in expedites} == {f"SO-{SKU}-1"}


def test_a_runtime_rebuilt_from_the_tables_carries_on_exactly_like_the_live_one() -> None:
    script = [
        [delivery("d1", 30, T0), order("o1", 4, T0 + 1)],
        [order("o2", 3, T0 + 20), order("o1", 4, T0 + 21)],
        [order("o3", 5, T0 + 65), delivery("d2", 90, T0 + 66)],
        [order("o4", 1, T0 + 130), order("o5", 2, T0 + 20)],
    ]

    def play(rebuild_each_time: bool) -> list[list[tuple[str, Any]]]:
        tracker._runtimes.clear()
        for table in tracker.TABLES:
            table.data.data.clear()
            table.data._key_partition.clear()
        feed = Feed()
        outputs = []
        for events in script:
            if rebuild_each_time:
                tracker._runtimes.clear()  # as after a restart: state from the tables only
            batch = run(feed.envelope(*events))
            outputs.append([(t, orjson.loads(v)) for t, _, v, _ in batch.outputs])
        return outputs

    assert play(rebuild_each_time=True) == play(rebuild_each_time=False)


def test_idle_close_emits_due_windows_once_and_persists_stream_time(monkeypatch: Any) -> None:
    import dataclasses

    committed: list[Batch] = []

    async def commit_to_tables(tp: TP, batch: Batch) -> None:
        assert tp == TP(ENVELOPES, P) and not batch.sources  # no input offsets
        list(_apply_to_stores(batch))
        committed.append(batch)

    idle = dataclasses.replace(tracker.settings, window_idle_close_seconds=3.0)
    monkeypatch.setattr(tracker, "settings", idle)
    monkeypatch.setattr(tracker, "can_commit", lambda tp: True)
    monkeypatch.setattr(tracker, "_commit", commit_to_tables)

    import asyncio

    feed = Feed()
    run(feed.envelope(order("o1", 1, T0 + 5), order("o2", 2, T0 + 30)))
    rt = tracker._runtimes[P]
    since = rt.idle_since
    # Idle for less than the setting, or long enough but nothing due yet: nothing happens.
    assert asyncio.run(tracker.idle_tick(since + 2.9)) == 0
    assert asyncio.run(tracker.idle_tick(since + 30)) == 0
    assert committed == []
    # 40 s idle: stream time T0 + 70 = end of [12:00, 12:01) + 10 s grace.
    assert asyncio.run(tracker.idle_tick(since + 40)) == 1
    results = [r for r in out(committed[0], topics.window_results) if r["kind"] == "tumbling"]
    assert [(r["window_start"], r["orders"], r["units"]) for r in results] == [
        ("2026-11-26T12:00:00Z", 2, 3)
    ]
    assert asyncio.run(tracker.idle_tick(since + 41)) == 0  # once
    meta = orjson.loads(tracker.get(tracker.partition_state, b"p%d" % P, P) or b"{}")
    assert meta["order_stream_time"] == T0 + 70

    # A restarted worker starts from the tables: the closed window is never emitted
    # again, the idle clock starts again, and an order for that window is late.
    tracker._runtimes.clear()
    late = run(feed.envelope(order("o3", 1, T0 + 40)))
    assert [r for r in out(late, topics.window_results) if r["kind"] == "tumbling"] == []
    assert tracker._runtimes[P].counters["late_orders"] == 1
