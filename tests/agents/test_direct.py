"""The direct join (agents/direct.py): raw input records in, staged outputs out.

The reader is replaced by a recorder of seeks; each "read" is handed to the join as
the real reader would hand it (records, positions, read to the end or not), and every
released batch is written to the tables as its commit would.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from agents import direct, partition_runtime, tracker
from app.engine import topics
from app.engine.input_reader import Read
from app.engine.transaction import Batch, _apply_to_stores

ORDERS = topics.orders.get_topic_name()
STOCK = topics.stock.get_topic_name()
N = topics.events_by_sku_partitions()
T0 = 1_795_694_400  # 2026-11-26T12:00:00Z
SKUS = [f"S-{i}" for i in range(12)]


class Seeks:
    """Stands in for the InputReader: records where the join seeks."""

    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks[tp] = offset


def record(topic: str, partition: int, offset: int, value: Any) -> Any:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, value=raw, key=None, timestamp=None
    )


def order(oid: str, sku: str, qty: int, ts: float) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer_id": "c",
        "sku": sku,
        "quantity": qty,
        "unit_price": 1.5,
        "ts": ts,
    }


def delivery(eid: str, sku: str, qty: int, ts: float) -> dict[str, Any]:
    return {"event_id": eid, "sku": sku, "reason": "delivery", "quantity": qty, "ts": ts}


def the_input() -> dict[TP, list[Any]]:
    """Orders and deliveries for 12 SKUs over two partitions of each topic, with ts out
    of order within a partition and across them, and one message that is not JSON."""
    o0 = [order(f"a{i}", SKUS[i % 12], 1 + i % 3, T0 + (i * 7) % 11) for i in range(30)]
    o1 = [order(f"b{i}", SKUS[(i * 5) % 12], 2, T0 + (i * 3) % 13) for i in range(30)]
    s0 = [delivery(f"d{i}", SKUS[i % 12], 5, T0 + i) for i in range(12)]
    inputs: dict[TP, list[Any]] = {
        TP(ORDERS, 0): [record(ORDERS, 0, n, v) for n, v in enumerate(o0)],
        TP(ORDERS, 1): [record(ORDERS, 1, n, v) for n, v in enumerate(o1)],
        TP(STOCK, 0): [record(STOCK, 0, n, v) for n, v in enumerate(s0)],
    }
    inputs[TP(ORDERS, 1)].insert(10, record(ORDERS, 1, 10, b"{not json"))
    inputs[TP(ORDERS, 1)] = [
        record(ORDERS, 1, n, r.value) for n, r in enumerate(inputs[TP(ORDERS, 1)])
    ]
    return inputs


def new_join() -> tuple[direct.DirectJoin, Seeks]:
    join = direct.DirectJoin()
    seeks = Seeks()
    join.reader = seeks  # type: ignore[assignment]
    return join, seeks


def build_all() -> None:
    for p in range(N):
        if p not in tracker.runtimes:
            tracker.runtimes[p] = tracker.rebuild(p)


def sources() -> list[TP]:
    names = partition_runtime.topic_names()
    return [TP(names[code], p) for code, p in partition_runtime.all_sources()]


def step(
    join: direct.DirectJoin,
    records: dict[TP, list[Any]],
    held: frozenset[TP] = frozenset(),
) -> list[Batch]:
    """One read: ``records`` (from where the join sought), every input partition read to
    its end except ``held``; then every partition's release, committed."""
    build_all()
    live = join.adopt()
    read = Read(records=dict(records))
    for tp in sources():
        recs = records.get(tp)
        read.positions[tp] = recs[-1].offset + 1 if recs else join.position.get(tp, 0)
        read.at_end[tp] = tp not in held
    join.feed(live, read)
    done = []
    for p, rt in sorted(live.items()):
        for batch in tracker.released(TP(topics.events_by_sku.get_topic_name(), p), rt, True):
            list(_apply_to_stores(batch))
            done.append(batch)
    return done


def outputs(batches: list[Batch], topic: Any) -> list[Any]:
    name = topic.get_topic_name()
    return [orjson.loads(v) for b in batches for t, _, v, _ in b.outputs if t == name]


def statuses(batches: list[Batch]) -> dict[str, list[tuple[str, str, int]]]:
    """Per SKU, its orders' (id, status, level after) in the order they were applied."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for s in outputs(batches, topics.order_status):
        found.setdefault(s["sku"], []).append((s["order_id"], s["status"], s["level_after"]))
    return found


def clear() -> None:
    for table in partition_runtime.TABLES:
        table.data.data.clear()
        table.data._key_partition.clear()
    tracker.runtimes.clear()


def test_the_join_starts_every_input_partition_at_its_beginning() -> None:
    join, seeks = new_join()
    build_all()
    join.adopt()
    assert seeks.seeks == dict.fromkeys(sources(), 0)


def test_every_event_is_applied_once_by_its_owner_and_a_bad_message_dead_lettered_once() -> None:
    join, _ = new_join()
    batches = step(join, the_input())
    applied = statuses(batches)
    assert sum(len(v) for v in applied.values()) == 60
    name = topics.order_status.get_topic_name()
    owners = {
        (orjson.loads(v)["sku"], b.table_partition)
        for b in batches
        for t, _, v, _ in b.outputs
        if t == name
    }
    assert all(topics.sku_partition(sku) == p for sku, p in owners)
    assert len({p for _, p in owners}) > 1
    letters = [
        (b.table_partition, orjson.loads(v))
        for b in batches
        for t, _, v, _ in b.outputs
        if t == topics.dead_letters.get_topic_name()
    ]
    # Input partition 1's bad message, by the tracker partition 1 mod N, once.
    assert [(p, d["partition"], d["offset"]) for p, d in letters] == [(1 % N, 1, 10)]
    # Read again (another partition joining seeks back): nothing applies twice.
    again = step(join, the_input())
    assert outputs(again, topics.order_status) == []
    assert outputs(again, topics.dead_letters) == []


def test_a_crash_while_events_wait_resumes_where_nothing_is_missed_and_nothing_doubles() -> None:
    inputs = the_input()
    join, _ = new_join()
    whole = step(join, inputs)
    expected = statuses(whole)
    expected_levels = {lv["sku"]: lv["level"] for lv in outputs(whole, topics.stock_levels)}
    clear()

    # The same input, but stock partition 0 lags: its first half is read, the rest is
    # not yet on the broker, so the orders after its mts wait in the merges.
    join, _ = new_join()
    first = {tp: recs[: len(recs) // 2] for tp, recs in inputs.items()}
    before = step(join, first, held=frozenset({TP(STOCK, 0)}))
    waiting = sum(len(rt.merge) for rt in tracker.runtimes.values())
    assert waiting > 0

    # kill -9: the runtimes go, the tables keep the last commit's.
    tracker.runtimes.clear()
    join, seeks = new_join()
    build_all()
    join.adopt()
    # Each input partition is read again from the oldest event still waiting anywhere.
    for tp, recs in first.items():
        assert seeks.seeks[tp] <= len(recs)
    rest = {tp: recs[seeks.seeks[tp] :] for tp, recs in inputs.items()}
    after = step(join, rest)
    got = statuses(before + after)
    assert got == expected
    levels = {lv["sku"]: lv["level"] for lv in outputs(before + after, topics.stock_levels)}
    assert levels == expected_levels
    assert len(outputs(before + after, topics.dead_letters)) == 1


def test_reads_of_any_size_give_the_statuses_of_one_read() -> None:
    inputs = the_input()
    join, _ = new_join()
    expected = statuses(step(join, inputs))
    clear()
    join, _ = new_join()
    got: list[Batch] = []
    longest = max(len(recs) for recs in inputs.values())
    for start in range(0, longest, 3):
        chunk = {tp: recs[start : start + 3] for tp, recs in inputs.items()}
        unread = frozenset(tp for tp, recs in inputs.items() if len(recs) > start + 3)
        got += step(join, {tp: recs for tp, recs in chunk.items() if recs}, held=unread)
    assert statuses(got) == expected


@pytest.mark.usefixtures("poisoned_parser")
def test_a_message_the_parser_fails_on_unexpectedly_is_dead_lettered_alone() -> None:
    good = order("g1", SKUS[0], 1, T0)
    inputs = {
        TP(ORDERS, 2): [
            record(ORDERS, 2, 0, order("poison", SKUS[1], 1, T0)),
            record(ORDERS, 2, 1, good),
        ]
    }
    join, _ = new_join()
    batches = step(join, inputs)
    [letter] = outputs(batches, topics.dead_letters)
    assert (letter["partition"], letter["offset"]) == (2, 0)
    assert "RuntimeError: a rule nobody foresaw" in letter["error"]
    assert [s["order_id"] for s in outputs(batches, topics.order_status)] == ["g1"]


def test_a_batch_carries_its_landing_token_and_shows_offsets_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct.app, "in_transaction", True)
    join, _ = new_join()
    [batch, *_] = step(join, the_input())
    # The token a retried commit looks for is in the partition's document it writes.
    table, key, token = batch.landed_by or (None, b"", b"")
    assert table is partition_runtime.partition_state
    doc = orjson.loads(batch.table_writes[(table, key)] or b"{}")
    assert doc["commit"].encode() == token
    # No offset of the SKU-keyed topic; the reader's positions only when shown.
    tp = TP(topics.events_by_sku.get_topic_name(), batch.table_partition or 0)
    join.decorate(tp, batch, {})
    assert batch.sources == {} and batch.metadata == {}
    p = 1 % N  # writes the dead letters of input partition 1, and shows its offset
    shown = join.shown_offsets(p)
    assert shown[TP(ORDERS, 1)] == len(the_input()[TP(ORDERS, 1)])
    assert join.show_due(p, 100.0)
    join.decorate(tp, batch, shown)
    assert batch.sources == shown
    join.saved_offsets[p], join.shown_at[p] = shown, 100.0  # as the driver does, committed
    assert not join.show_due(p, 100.5)  # nothing moved
    join.position[TP(ORDERS, 1)] += 5
    assert not join.show_due(p, 100.5)  # moved, but shown less than a second ago
    assert join.show_due(p, 101.0)
    assert join.progress_due(p, tracker.runtimes[p], 101.0)
