"""The tracker agent's batch function: envelopes in, staged outputs and table writes out."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, NamedTuple

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.types import TP

from agents import partition_runtime, processor, tracker
from agents.ingest import envelope_row
from app.engine import restore, stores, topics
from app.engine.stores import LOCAL_PREFIX, items, local_range, put_local
from app.engine.transaction import Batch, _apply_to_stores
from tables.order_status import EXPIRY as STATUS_EXPIRY
from tables.order_status import keep_expiry_index
from tables.seen_ids import EXPIRY

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
    """Envelopes for one SKU partition, as ingest writes them, with growing offsets.

    Events come from partition 0 of their topic; every envelope also carries every
    input partition's progress report, "read to its end" (a worker that is caught up).
    """

    def __init__(self) -> None:
        self.input_offset = {ORDERS: 0, STOCK: 0}
        self.mts: dict[str, float] = {}
        self.envelope_offset = 0

    def envelope(self, *events: tuple[str, dict[str, Any]], replay_of: Any = None) -> Any:
        rows = []
        for topic, value in events:
            offset = self.input_offset[topic]
            self.input_offset[topic] += 1
            _, row = envelope_row(topic == ORDERS, offset, orjson.dumps(value))
            self.mts[topic] = max(self.mts.get(topic, row[-1]), row[-1])
            rows.append([*row, 0, self.mts[topic]])  # input partition 0, merge key's mts
        marks = []
        for code, part in partition_runtime.all_sources():
            mts = self.mts.get(ORDERS if code == 0 else STOCK) if part == 0 else None
            marks.append([code, part, mts, 0, True, 0])
        # What the batch tap hands the tracker: a raw aiokafka record.
        record = SimpleNamespace(
            topic=ENVELOPES,
            partition=P,
            offset=self.envelope_offset,
            value=orjson.dumps({"r": rows, "m": marks}) if replay_of is None else replay_of.value,
        )
        self.envelope_offset += 1
        return record


def built() -> partition_runtime.PartitionRuntime:
    """Partition P's runtime, built (as on assignment) if there is none, before any
    envelope of the test was written: the end offset then was 0, so every envelope of
    the test is newer than the build (``fresh_from``)."""
    rt = tracker.runtimes.get(P)
    if rt is None:
        rt = tracker.runtimes[P] = tracker.rebuild(P)
        rt.fresh_from = 0
    return rt


def run(*records: Any) -> Batch:
    """Process one fetch and write it to the tables, as a committed transaction does."""
    built()
    [batch] = list(tracker.batches(TP(ENVELOPES, P), records))
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
    state = orjson.loads(
        partition_runtime.get(partition_runtime.sku_state, SKU.encode(), P) or b"null"
    )
    assert state["level"] == -3 and state["as_of"]["offset"] == 1


def test_each_key_is_written_once_per_batch() -> None:
    feed = Feed()
    batch = run(feed.envelope(*(order(f"o{i}", 1, T0 + i) for i in range(50))))
    keys = [(table.name, key) for table, key in batch.table_writes]
    assert len(keys) == len(set(keys))
    assert sum(1 for name, key in keys if name == partition_runtime.sku_state.name) == 1


def test_a_duplicate_order_changes_nothing_and_is_counted() -> None:
    feed = Feed()
    run(feed.envelope(order("o1", 2, T0)))
    batch = run(feed.envelope(order("o1", 2, T0 + 5)))
    assert out(batch, topics.order_status) == [] and out(batch, topics.stock_levels) == []
    assert tracker.runtimes[P].counters["duplicates"] == 1
    assert (
        orjson.loads(partition_runtime.get(partition_runtime.sku_state, SKU.encode(), P) or b"{}")[
            "level"
        ]
        == -2
    )


def test_a_redelivered_envelope_is_skipped_not_applied_twice() -> None:
    feed = Feed()
    first = feed.envelope(order("o1", 2, T0), order("o2", 1, T0 + 1))
    run(first)
    again = run(feed.envelope(replay_of=first))
    assert again.outputs == []
    rt = tracker.runtimes[P]
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
    assert tracker.runtimes[P].counters["late_orders"] == 1
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


def play_script(
    script: list[list[tuple[str, dict[str, Any]]]], rebuild_each_time: bool
) -> list[list[tuple[str, Any]]]:
    """Each batch's outputs of ``script`` (one envelope per batch) from empty tables;
    with ``rebuild_each_time``, every batch finds its runtime rebuilt from the tables
    only, as after a restart."""
    tracker.runtimes.clear()
    for table in partition_runtime.TABLES:
        table.data.data.clear()
        table.data._key_partition.clear()
    feed = Feed()
    outputs = []
    for events in script:
        if rebuild_each_time:
            tracker.runtimes.clear()
        batch = run(feed.envelope(*events))
        outputs.append([(t, orjson.loads(v)) for t, _, v, _ in batch.outputs])
    return outputs


def test_a_runtime_rebuilt_from_the_tables_carries_on_exactly_like_the_live_one() -> None:
    script = [
        [delivery("d1", 30, T0), order("o1", 4, T0 + 1)],
        [order("o2", 3, T0 + 20), order("o1", 4, T0 + 21)],
        [order("o3", 5, T0 + 65), delivery("d2", 90, T0 + 66)],
        [order("o4", 1, T0 + 130), order("o5", 2, T0 + 20)],
        [delivery("d3", 5, T0 + 140)],
        # Past the closed windows' retention (an hour) for those of the first minutes.
        [order("o6", 1, T0 + 3_700)],
        [order("o7", 1, T0 + 4_100)],
    ]

    def play(rebuild_each_time: bool) -> tuple[list[list[tuple[str, Any]]], list[Any]]:
        outputs = play_script(script, rebuild_each_time)
        held = sorted(
            (k.decode(), orjson.loads(v)) for k, v in items(partition_runtime.windows, P)
        )
        return outputs, held

    rebuilt, live = play(rebuild_each_time=True), play(rebuild_each_time=False)
    assert rebuilt == live
    held_starts = {int(key.split("|")[1]) for key, _ in live[1]}
    # Every window of the first two minutes closed and left after its hour; later ones
    # are still held (closed or open).
    assert held_starts and min(held_starts) >= T0 + 3_700 - 300 - 3_600
    assert any(doc["closed"] for _, doc in live[1]) and not all(d["closed"] for _, d in live[1])


def test_a_rebuilt_partition_of_several_skus_closes_windows_it_never_read_like_the_live_one() -> (
    None
):
    # After a rebuild a SKU's windows are read at its first order, the others' as stream
    # time closes them (PartitionWindows.restore_from): an order of one SKU that closes
    # the others' windows must emit them exactly as the live runtime does.
    skus = [s for s in (f"T-{i}" for i in range(2, 400)) if topics.sku_partition(s) == P][:4]
    a, b, c, d = skus
    script = [
        [order("o1", 1, T0 + 1, a), order("o2", 2, T0 + 2, b), order("o3", 3, T0 + 3, c)],
        [order("o4", 1, T0 + 30, b), order("o5", 1, T0 + 31, b), order("o6", 1, T0 + 32, b)],
        [order("o7", 1, T0 + 75, d)],  # closes the first minute of a, b, c
        [order("o8", 1, T0 + 40, c), order("o9", 1, T0 + 135, a)],  # late for c
        [order("o10", 1, T0 + 200, b), order("o11", 1, T0 + 201, d)],
        [order("o12", 1, T0 + 700, c)],  # closes every window still open
    ]

    rebuilt, live = play_script(script, True), play_script(script, False)
    assert rebuilt == live
    results = [
        doc for batch in live for t, doc in batch if t == topics.window_results.get_topic_name()
    ]
    assert {doc["sku"] for doc in results[:6]} == {a, b, c}  # closed by d's order
    assert len(results) == len({(r["sku"], r["kind"], r["window_start"]) for r in results})


def test_a_rebuilt_partition_reads_its_windows_only_when_an_order_needs_them() -> None:
    feed = Feed()
    run(feed.envelope(order("o1", 1, T0), order("o2", 1, T0 + 70)))
    tracker.runtimes.clear()
    run(feed.envelope(delivery("d1", 5, T0 + 71)))  # no order: nothing to read
    rt = tracker.runtimes[P]
    assert rt.loaded_windows is None
    run(feed.envelope(order("o3", 1, T0 + 72)))
    pw = rt.loaded_windows
    assert pw is not None and pw.stream_time == T0 + 72
    # What the first two batches left open is what the third found (o1's tumbling
    # window closed at T0 + 70: only o2's and o3's minute is open, with both).
    assert [(s, e, a.orders) for s, e, a in pw.windows_for(SKU, "tumbling")] == [
        (T0 + 60, T0 + 120, 2)
    ]


def envelope(offset: int, rows: list[list[Any]], marks: list[list[Any]]) -> Any:
    return SimpleNamespace(
        topic=ENVELOPES, partition=P, offset=offset, value=orjson.dumps({"r": rows, "m": marks})
    )


def row(topic: str, partition: int, offset: int, value: dict[str, Any], mts: float) -> list[Any]:
    _, r = envelope_row(topic == ORDERS, offset, orjson.dumps(value))
    return [*r, partition, mts]


def report(code: int, partition: int, mts: float | None, at_end: bool) -> list[Any]:
    return [code, partition, mts, 0, at_end, 0]


def all_at_end(*but: tuple[int, int]) -> list[list[Any]]:
    return [
        report(c, p, None, True) for c, p in partition_runtime.all_sources() if (c, p) not in but
    ]


def test_events_wait_for_a_lagging_input_partition_and_then_apply_in_event_time_order() -> None:
    """A delivery read late (its partition lagged) is still applied before a younger
    order: the order waits until the stock partition has moved past it."""
    built()
    tp = TP(ENVELOPES, P)
    first = envelope(
        0,
        [row(ORDERS, 0, 0, order("o1", 5, T0 + 60)[1], T0 + 60)],
        [*all_at_end((1, 0)), report(1, 0, T0 - 100, False)],
    )
    [held] = list(tracker.batches(tp, [first]))
    list(_apply_to_stores(held))
    assert out(held, topics.order_status) == []
    # Nothing applied: a restart must read envelope 0 again.
    assert held.sources == {tp: 0}
    second = envelope(
        1,
        [row(STOCK, 0, 7, delivery("d1", 10, T0)[1], T0)],
        [report(1, 0, T0 + 61, False)],  # stock partition 0 has moved past the order
    )
    [batch] = list(tracker.batches(tp, [second]))
    list(_apply_to_stores(batch))
    [status] = out(batch, topics.order_status)
    assert (status["status"], status["level_after"]) == ("allocated", 5)
    assert batch.sources == {tp: 2}


def test_a_stale_read_to_end_report_of_an_older_generation_is_not_trusted() -> None:
    rt = built()
    rt.generation = 5
    tp = TP(ENVELOPES, P)
    stale = [[c, p, None, 0, True, 4] for c, p in partition_runtime.all_sources()]
    rec = envelope(0, [row(ORDERS, 0, 0, order("o1", 1, T0)[1], T0)], stale)
    [batch] = list(tracker.batches(tp, [rec]))
    assert out(batch, topics.order_status) == []
    fresh = [[c, p, None, 0, True, 5] for c, p in partition_runtime.all_sources()]
    [batch] = list(tracker.batches(tp, [envelope(1, [], fresh)]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]


def test_an_event_whose_processing_fails_is_dead_lettered_and_the_rest_of_the_batch_commits(
    monkeypatch: Any,
) -> None:
    """Fault injection: the rules raise for one chosen order. That order becomes a dead
    letter; the events before and after it in the same batch are applied exactly once,
    and the state is as if the bad order had never been there."""
    real = processor.apply_order

    def failing(state: Any, o: Any, **kw: Any) -> Any:
        if o.order_id == "poison":
            raise OverflowError("injected failure")
        return real(state, o, **kw)

    monkeypatch.setattr(processor, "apply_order", failing)
    feed = Feed()
    run(feed.envelope(delivery("d0", 50, T0)))
    env = feed.envelope(order("o1", 4, T0 + 1), order("poison", 7, T0 + 2), order("o2", 3, T0 + 3))
    batch = run(env)
    statuses = out(batch, topics.order_status)
    assert [(s["order_id"], s["level_after"]) for s in statuses] == [("o1", 46), ("o2", 43)]
    assert [lv["level"] for lv in out(batch, topics.stock_levels)] == [46, 43]
    [letter] = out(batch, topics.dead_letters)
    assert letter["source_topic"] == ORDERS and letter["offset"] == 1
    assert "injected failure" in letter["error"]
    assert orjson.loads(letter["value"])["order_id"] == "poison"
    rt = tracker.runtimes[P]
    assert rt.counters["orders"] == 2 and rt.counters["failed"] == 1
    # The id of the failed order is not remembered: only applied events are.
    assert (
        partition_runtime.get(partition_runtime.seen_ids, f"o/{SKU}\x1fpoison".encode(), P) is None
    )
    assert (
        partition_runtime.get(partition_runtime.seen_ids, f"o/{SKU}\x1fo1".encode(), P) is not None
    )
    # A re-delivery (after a crash) skips it as applied: no second dead letter.
    tracker.runtimes.clear()
    again = run(feed.envelope(replay_of=env))
    assert again.outputs == []
    assert tracker.runtimes[P].counters["replayed"] == 3


DAY = 86_400


def seen_keys() -> list[bytes]:
    return [k for k, _ in items(partition_runtime.seen_ids, P)]


def index_keys() -> list[bytes]:
    return [
        k
        for k, _ in local_range(
            partition_runtime.seen_ids,
            P,
            EXPIRY,
            EXPIRY + b"\xff",
        )
    ]


def local_keys() -> list[tuple[bytes, bytes]]:
    return list(local_range(partition_runtime.seen_ids, P, b"\x00", b"\x01"))


def tracker_batch(record: Any) -> Batch:
    """One fetch's batch, not yet written to the tables."""
    built()
    [batch] = list(tracker.batches(TP(ENVELOPES, P), [record]))
    return batch


def test_the_duplicate_memory_lasts_exactly_its_horizon_whatever_the_batching() -> None:
    """An id re-sent within DEDUPE_SECONDS of stream time is a duplicate, one re-sent
    later is new; the same stream in one batch or in many gives the same answer."""
    script = [
        order("o1", 1, T0),
        order("x", 1, T0 + DAY - 1),
        order("o1", 1, T0 + DAY - 1),  # within the day: duplicate
        order("y", 1, T0 + DAY + 5),
        order("o1", 1, T0 + DAY + 6),  # more than a day after the first o1: new
    ]

    def play(one_batch: bool) -> tuple[int, list[str]]:
        tracker.runtimes.clear()
        for table in partition_runtime.TABLES:
            table.data.data.clear()
            table.data._key_partition.clear()
        feed = Feed()
        batches = (
            [run(feed.envelope(*script))] if one_batch else [run(feed.envelope(e)) for e in script]
        )
        ids = [s["order_id"] for b in batches for s in out(b, topics.order_status)]
        return tracker.runtimes[P].counters["duplicates"], ids

    assert play(one_batch=True) == play(one_batch=False) == (1, ["o1", "x", "y", "o1"])


class ChangelogRecord(NamedTuple):
    """What a restore fetches from a changelog (the fields app/engine/restore.py reads)."""

    topic: str
    offset: int
    timestamp: int
    key: bytes
    value: bytes | None


def restore_from(records: list[tuple[str, bytes, bytes | None, int | None]]) -> None:
    """Wipe partition P of the tracker's tables and restore it from ``records`` (a
    batch's changelog records), as app/engine/restore.py does."""
    for table in partition_runtime.TABLES:
        restore.wipe_partition(table, P)
        name = table.changelog_topic.get_topic_name()
        found = [
            ChangelogRecord(name, i, 0, k, v)
            for i, (t, k, v, _) in enumerate(r for r in records if r[0] == name)
        ]
        restore.apply_fetched(table, P, found, "cluster")
    tracker.runtimes.clear()


def test_expired_ids_leave_the_store_and_a_restore_keeps_the_index() -> None:
    feed = Feed()
    changelog = list(_apply_to_stores(tracker_batch(feed.envelope(order("a", 1, T0)))))
    changelog += _apply_to_stores(tracker_batch(feed.envelope(order("b", 1, T0 + 10))))
    assert len(seen_keys()) == 2 and len(index_keys()) == 2
    # Nothing of the index reaches the changelog: local keys are the store's own.
    assert changelog and not any(k.startswith(LOCAL_PREFIX) for _, k, _, _ in changelog)
    # A restore from the changelog alone writes the index with the ids it restores.
    restore_from(changelog)
    assert len(seen_keys()) == 2 and len(index_keys()) == 2
    run(feed.envelope(order("c", 1, T0 + DAY + 5)))  # a's day is over, b's is not
    assert sorted(seen_keys()) == [f"o/{SKU}\x1f{i}".encode() for i in ("b", "c")]
    assert len(index_keys()) == 2


def test_a_stale_index_key_never_expires_a_renewed_id() -> None:
    feed = Feed()
    changelog = list(_apply_to_stores(tracker_batch(feed.envelope(order("a", 1, T0)))))
    # A day later "a" is new again: its entry is renewed with the later ts.
    changelog += _apply_to_stores(tracker_batch(feed.envelope(order("a", 1, T0 + DAY + 5))))
    restore_from(changelog)
    # The restore wrote an index key for each entry it replayed: one of them is stale.
    assert len(seen_keys()) == 1 and len(index_keys()) == 2
    batch = run(feed.envelope(order("x", 1, T0 + DAY + 10)))  # T0's index key expires
    assert f"o/{SKU}\x1fa".encode() in seen_keys()
    assert len(index_keys()) == 2  # a's live one and x's
    assert not any(
        v is None
        for (t, k), v in batch.table_writes.items()
        if t is partition_runtime.seen_ids and not k.startswith(LOCAL_PREFIX)
    )
    # Within a day of its renewal "a" is still a duplicate.
    run(feed.envelope(order("a", 1, T0 + DAY + 20)))
    assert tracker.runtimes[P].counters["duplicates"] == 1


def test_a_store_from_a_release_without_the_index_gets_it_once() -> None:
    feed = Feed()
    run(feed.envelope(order("a", 1, T0), order("b", 1, T0 + 10)))
    marker = [k for k, _ in local_keys() if k.startswith(b"\x00index:")]
    assert len(marker) == 1
    # As a store written by the previous release may be: some index keys missing.
    put_local(partition_runtime.seen_ids, [(k, None) for k in [*index_keys(), *marker]], P)
    tracker.runtimes.clear()
    run(feed.envelope(order("c", 1, T0 + DAY + 5)))  # a's day is over, b's is not
    assert sorted(seen_keys()) == [f"o/{SKU}\x1f{i}".encode() for i in ("b", "c")]
    assert len(index_keys()) == 2
    assert [k for k, _ in local_keys() if k.startswith(b"\x00index:")] == marker


@pytest.fixture
def idle_commits(monkeypatch: Any) -> list[Batch]:
    """Idle close on (3 s); its commits go straight to the tables and are listed here."""

    committed: list[Batch] = []

    async def commit_to_tables(tp: TP, batch: Batch) -> None:
        assert tp == TP(ENVELOPES, P) and not batch.sources  # no input offsets
        list(_apply_to_stores(batch))
        committed.append(batch)

    idle = dataclasses.replace(tracker.settings, window_idle_close_seconds=3.0)
    monkeypatch.setattr(tracker, "settings", idle)
    monkeypatch.setattr(tracker, "can_commit", lambda tp: True)
    monkeypatch.setattr(tracker, "_commit", commit_to_tables)
    return committed


def test_idle_close_emits_due_windows_once_and_persists_stream_time(
    idle_commits: list[Batch],
) -> None:
    import asyncio

    committed = idle_commits
    feed = Feed()
    run(feed.envelope(order("o1", 1, T0 + 5), order("o2", 2, T0 + 30)))
    rt = tracker.runtimes[P]
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
    meta = orjson.loads(
        partition_runtime.get(partition_runtime.partition_state, b"p%d" % P, P) or b"{}"
    )
    assert meta["order_stream_time"] == T0 + 70

    # A restarted worker starts from the tables: the closed window is never emitted
    # again, the idle clock starts again, and an order for that window is late.
    tracker.runtimes.clear()
    late = run(feed.envelope(order("o3", 1, T0 + 40)))
    assert [r for r in out(late, topics.window_results) if r["kind"] == "tumbling"] == []
    assert tracker.runtimes[P].counters["late_orders"] == 1


def test_idle_close_waits_for_events_held_by_the_merge_and_ignores_bare_reports(
    idle_commits: list[Batch],
) -> None:
    """A progress report (sent to every partition by every ingest batch) is no event:
    it does not restart the idle clock. A partition whose merge holds events waiting
    for a lagging input partition is not idle: idle close would make them late."""
    import asyncio

    committed = idle_commits
    feed = Feed()
    run(feed.envelope(order("o1", 1, T0 + 5)))
    rt = tracker.runtimes[P]
    since = rt.idle_since
    tp = TP(ENVELOPES, P)
    list(tracker.batches(tp, [envelope(feed.envelope_offset, [], all_at_end())]))
    assert rt.idle_since == since
    # An order arrives whose stock partition lags: held, so no idle close.
    held = envelope(
        feed.envelope_offset + 1,
        [row(ORDERS, 0, 1, order("o2", 1, T0 + 6)[1], T0 + 6)],
        [*all_at_end((1, 0)), report(1, 0, T0 - 50, False)],
    )
    list(tracker.batches(tp, [held]))
    assert len(rt.merge) == 1
    assert asyncio.run(tracker.idle_tick(since + 1_000)) == 0 and committed == []


def test_a_read_to_end_report_written_before_the_rebuild_is_not_trusted() -> None:
    """After a restart the tracker reads old envelopes again. One may say "read to its
    end" of an input partition that has grown since; with static membership a restart
    keeps the group generation, so only the envelope's offset tells: reports from
    envelopes below the end offset read at the rebuild do not count, later ones do."""
    rt = tracker.rebuild(P)
    tracker.runtimes[P] = rt
    tp = TP(ENVELOPES, P)
    # Same generation in every report: only the offsets differ.
    stale = envelope(3, [row(ORDERS, 0, 0, order("o1", 1, T0)[1], T0)], all_at_end())
    # The end offset is not known yet: no "read to its end" counts at all.
    [batch] = list(tracker.batches(tp, [stale]))
    assert out(batch, topics.order_status) == []
    assert batch.sources == {tp: 3}  # the waiting order's envelope is read again
    rt.fresh_from = 5  # the partition's end offset when the runtime was built
    again = envelope(4, [], all_at_end())
    [batch] = list(tracker.batches(tp, [again]))
    assert out(batch, topics.order_status) == []
    # The stale report's progress still counts (a lower bound): stock partition 0 has
    # moved past the order, so only a fresh "read to its end" from the others is needed.
    moved = [report(1, 0, T0 + 1, False), *all_at_end((1, 0))]
    [batch] = list(tracker.batches(tp, [envelope(5, [], moved)]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]
    assert batch.sources == {tp: 6}


def test_a_fresh_read_to_end_report_is_trusted_right_after_the_rebuild() -> None:
    rt = tracker.rebuild(P)
    tracker.runtimes[P] = rt
    rt.fresh_from = 2
    tp = TP(ENVELOPES, P)
    [batch] = list(
        tracker.batches(tp, [envelope(2, [row(ORDERS, 0, 0, order("o1", 1, T0)[1], T0)], [])])
    )
    assert out(batch, topics.order_status) == []  # nobody said "read to its end" yet
    [batch] = list(tracker.batches(tp, [envelope(3, [], all_at_end())]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]


def at_end_at(position: int, *but: tuple[int, int]) -> list[list[Any]]:
    """Every input partition "read to its end", ingest's consumer at ``position``."""
    return [
        [c, p, None, position, True, 0]
        for c, p in partition_runtime.all_sources()
        if (c, p) not in but
    ]


def stale_runtime(source_end: int) -> partition_runtime.PartitionRuntime:
    """Partition P rebuilt when its end offset was 5 and every input partition's end
    offset (read_committed) was ``source_end``."""
    rt = tracker.runtimes[P] = tracker.rebuild(P)
    rt.fresh_from = 5
    rt.source_ends = dict.fromkeys(partition_runtime.all_sources(), source_end)
    return rt


def test_a_stale_read_to_end_report_is_trusted_if_its_source_held_nothing_more() -> None:
    """A trusted end per report: an envelope written before the rebuild says "read to
    its end" at position 7, and 7 was the source's end offset when the runtime was
    built, so the source had nothing more to give then: the order does not wait for a
    fresh report (which ingest sends only a second later)."""
    stale_runtime(7)
    tp = TP(ENVELOPES, P)
    rec = envelope(3, [row(ORDERS, 0, 6, order("o1", 1, T0)[1], T0)], at_end_at(7))
    [batch] = list(tracker.batches(tp, [rec]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]
    assert batch.sources == {tp: 4}


def test_a_stale_read_to_end_report_of_a_source_that_grew_is_not_trusted() -> None:
    """The stock partition had grown past the stale report's position (8 > 7) by the
    rebuild: it may hold an older delivery not read yet, so the order waits, until a
    fresh report (or the stock partition's records) says otherwise. A stale report
    without a position (an older release, or ``None``) is not trusted either."""
    rt = stale_runtime(7)
    rt.source_ends[(1, 0)] = 8
    tp = TP(ENVELOPES, P)
    rec = envelope(
        2,
        [row(ORDERS, 0, 6, order("o1", 1, T0)[1], T0)],
        [*at_end_at(7, (1, 0)), [1, 0, None, 7, True, 0]],
    )
    [batch] = list(tracker.batches(tp, [rec]))
    assert out(batch, topics.order_status) == []
    assert rt.merge.progress[(1, 0)].at_end is False
    assert batch.sources == {tp: 2}  # the waiting order's envelope is read again
    no_position = [*at_end_at(7, (1, 0)), [1, 0, None, None, True, 0]]
    [batch] = list(tracker.batches(tp, [envelope(3, [], no_position)]))
    assert out(batch, topics.order_status) == []
    # A stale report that reached the end offset counts again...
    [batch] = list(tracker.batches(tp, [envelope(4, [], at_end_at(8))]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]


def test_a_fresh_report_of_a_source_that_grew_is_trusted_and_needs_no_position() -> None:
    rt = stale_runtime(7)
    rt.source_ends[(1, 0)] = 8
    tp = TP(ENVELOPES, P)
    rec = envelope(5, [row(ORDERS, 0, 6, order("o1", 1, T0)[1], T0)], all_at_end())
    [batch] = list(tracker.batches(tp, [rec]))
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["o1"]


async def test_the_end_offset_is_learnt_once_per_rebuild(monkeypatch: Any) -> None:
    asked: list[list[TP]] = []
    answer: dict[TP, int] | Exception = {TP(ENVELOPES, P): 42}

    async def end_offsets(tps: list[TP]) -> dict[TP, int]:
        asked.append(list(tps))
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(tracker, "end_offsets", end_offsets)
    names = partition_runtime.topic_names()
    sources = partition_runtime.all_sources()
    inputs = [TP(names[c], p) for c, p in sources]
    rt = tracker.runtimes[P] = tracker.rebuild(P)
    # The broker does not answer: still unknown (nothing trusted), asked again next time.
    answer = KafkaTimeoutError()
    await tracker.learn_fresh_from([P])
    assert rt.fresh_from is None and rt.source_ends == {}
    # The input partitions' end offsets come in the same request.
    answer = {TP(ENVELOPES, P): 42, **{tp: 10 + i for i, tp in enumerate(inputs)}}
    await tracker.learn_fresh_from([P])
    assert rt.fresh_from == 42
    assert rt.source_ends == {s: 10 + i for i, s in enumerate(sources)}
    await tracker.learn_fresh_from([P])  # known: not asked again
    assert asked == [[TP(ENVELOPES, P), *inputs]] * 2
    # A rebuild (a new assignment) learns it again.
    fresh = tracker.runtimes[P] = tracker.rebuild(P)
    answer = {TP(ENVELOPES, P): 50}
    await tracker.learn_fresh_from([P])
    assert fresh.fresh_from == 50 and len(asked) == 3
    assert fresh.source_ends == {}  # not answered for: no stale report counts


def test_order_statuses_leave_once_their_retention_is_over(monkeypatch: Any) -> None:
    kept = dataclasses.replace(processor.settings, order_status_retention_seconds=3_600)
    monkeypatch.setattr(processor, "settings", kept)
    # As at the start of a worker with ORDER_STATUS_RETENTION_SECONDS set.
    monkeypatch.setitem(stores._indexes, id(partition_runtime.order_status), None)
    keep_expiry_index()
    feed = Feed()
    run(feed.envelope(order("a", 1, T0), order("b", 1, T0 + 100)))

    def status(oid: str) -> bytes | None:
        return partition_runtime.get(partition_runtime.order_status, oid.encode(), P)

    assert status("a") and status("b")
    # An hour after a, not yet after b: a leaves, in the changelog too.
    batch = run(feed.envelope(order("c", 1, T0 + 3_650)))
    assert status("a") is None and status("b") and status("c")
    assert (partition_runtime.order_status, b"a") in batch.table_writes
    assert batch.table_writes[(partition_runtime.order_status, b"a")] is None
    index = list(
        local_range(partition_runtime.order_status, P, STATUS_EXPIRY, STATUS_EXPIRY + b"\xff")
    )
    assert len(index) == 2  # b's and c's
    # A rebuilt runtime carries on (the index is the store's, not the runtime's).
    tracker.runtimes.clear()
    run(feed.envelope(order("d", 1, T0 + 3_750)))
    assert status("b") is None and status("c") and status("d")


def test_a_separator_inside_a_sku_makes_no_duplicate_of_another_skus_order() -> None:
    # "a\x1fb" + "c" and "a" + "b\x1fc" once made the same duplicate-memory key.
    feed = Feed()
    batch = run(
        feed.envelope(
            order("c", 1, T0, sku="a\x1fb"),
            order("b\x1fc", 1, T0 + 1, sku="a"),
            order("c", 1, T0 + 2, sku="a\x1fb"),
        )
    )
    assert [s["order_id"] for s in out(batch, topics.order_status)] == ["c", "b\x1fc"]
    assert tracker.runtimes[P].counters["duplicates"] == 1
