"""The ingest agent's batch function: raw input records in, envelopes and dead letters out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from agents import ingest
from app.engine import topics

ORDERS = topics.orders.get_topic_name()
STOCK = topics.stock.get_topic_name()
ENVELOPES = topics.events_by_sku.get_topic_name()
DEAD = topics.dead_letters.get_topic_name()


def record(
    topic: str, partition: int, offset: int, value: Any, key: bytes | None = None, ts_ms: int = 0
) -> Any:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, key=key, value=raw, timestamp=ts_ms
    )


def order(oid: str, sku: str) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer_id": "c",
        "sku": sku,
        "quantity": 2,
        "unit_price": 1.5,
        "ts": "2026-11-26T12:00:00Z",
    }


def test_valid_events_are_routed_by_sku_and_bad_ones_dead_lettered() -> None:
    move = {"event_id": "e1", "sku": "A", "reason": "delivery", "quantity": 5, "ts": 1_795_694_400}
    batches = ingest.build_batches(
        {
            TP(ORDERS, 1): [
                record(ORDERS, 1, 10, order("o1", "A"), ts_ms=100),
                record(ORDERS, 1, 11, b"{not json", key=b"k", ts_ms=200),
                record(ORDERS, 1, 12, order("o2", "B"), ts_ms=300),
            ],
            TP(STOCK, 1): [record(STOCK, 1, 7, move, ts_ms=250)],
        }
    )
    # Outside a running worker there is one producer, so one batch holds everything.
    [pending] = batches.values()
    source, batch = pending.source, pending.batch
    assert source.partition == 1
    assert batch.sources == {TP(ORDERS, 1): 13, TP(STOCK, 1): 8}
    envelopes = [(p, orjson.loads(v)) for t, _, v, p in batch.outputs if t == ENVELOPES]
    by_sku: dict[str, list[Any]] = {}
    for partition, env in envelopes:
        for row in env["r"]:
            sku = row[4] if row[0] == "o" else row[3]
            assert partition == topics.sku_partition(sku)
            by_sku.setdefault(sku, []).append((row[0], row[1], row[-2]))
    # Kind, input offset and input partition.
    assert sorted(by_sku["A"]) == [("o", 10, 1), ("s", 7, 1)]
    dead = [orjson.loads(v) for t, _, v, _ in batch.outputs if t == DEAD]
    assert len(dead) == 1
    assert dead[0]["source_topic"] == ORDERS
    assert (dead[0]["partition"], dead[0]["offset"], dead[0]["key"]) == (1, 11, "k")
    assert dead[0]["value"] == "{not json" and dead[0]["error"]


def test_an_envelope_never_holds_more_than_its_row_limit() -> None:
    n = ingest.ENVELOPE_ROWS + 5
    batches = ingest.build_batches(
        {TP(ORDERS, 0): [record(ORDERS, 0, i, order(f"o{i}", "SAME")) for i in range(n)]}
    )
    [pending] = batches.values()
    batch = pending.batch
    target = topics.sku_partition("SAME")
    envs = [orjson.loads(v) for t, _, v, p in batch.outputs if t == ENVELOPES and p == target]
    assert [len(e["r"]) for e in envs] == [ingest.ENVELOPE_ROWS, 5]
    # The progress report rides on the last envelope only, after every row it covers.
    assert [len(e["m"]) for e in envs] == [0, 1]
    rows = [r for e in envs for r in e["r"]]
    assert [r[1] for r in rows] == list(range(n))  # offset order across envelopes


def test_every_sku_partition_hears_every_input_partitions_progress() -> None:
    """Rows carry their partition's running max ts (the merge key's mts); every SKU
    partition gets each source's report, also one that got no row."""
    stamps = [100, 50, 300, 200]
    batches = ingest.build_batches(
        {
            TP(ORDERS, 2): [
                record(ORDERS, 2, i, {**order(f"o{i}", "A"), "ts": 1_795_694_400 + t})
                for i, t in enumerate(stamps)
            ]
        },
        ends={TP(ORDERS, 2): True, TP(STOCK, 2): False},
        generation=7,
    )
    [pending] = batches.values()
    envs = {p: orjson.loads(v) for t, _, v, p in pending.batch.outputs if t == ENVELOPES}
    assert sorted(envs) == list(range(topics.events_by_sku_partitions()))
    rows = envs[topics.sku_partition("A")]["r"]
    base = 1_795_694_400
    assert [r[-1] - base for r in rows] == [100, 100, 300, 300]
    for env in envs.values():
        assert sorted(env["m"]) == [[0, 2, base + 300.0, 4, True, 7], [1, 2, None, None, False, 7]]
    # The committed offset carries the mts, for whoever reads the partition next.
    assert pending.batch.metadata == {TP(ORDERS, 2): repr(base + 300.0)}
    assert ingest.mts_from_metadata(pending.batch.metadata[TP(ORDERS, 2)]) == base + 300.0


def test_nothing_is_sent_for_a_partition_with_nothing_new_to_say() -> None:
    ingest._sources.clear()
    ends = {TP(STOCK, 0): True}
    [pending] = ingest.build_batches({}, ends, generation=3).values()
    ingest._sources.update(pending.states)
    assert ingest.build_batches({}, ends, generation=3) == {}
    # A new generation (a rebalance): said again, since the tracker trusts only it.
    assert ingest.build_batches({}, ends, generation=4) != {}
    ingest._sources.clear()


def test_a_partition_read_to_its_end_says_so_again_every_second() -> None:
    """A tracker partition rebuilt after a restart trusts only reports written after its
    rebuild (agents/tracker.py), and with static membership the generation stays: so a
    source read to its end repeats it every REPORT_EVERY_S; one with records to read
    has nothing to repeat (it reports when it reads them)."""
    ingest._sources.clear()
    ends = {TP(STOCK, 0): True, TP(ORDERS, 1): False}
    t = 1000.0
    first = ingest.build_batches({}, ends, generation=3, clock=t)
    [pending] = first.values()
    ingest._sources.update(pending.states)
    every = ingest.REPORT_EVERY_S
    assert ingest.build_batches({}, ends, generation=3, clock=t + every / 2) == {}
    [again] = ingest.build_batches({}, ends, generation=3, clock=t + every).values()
    marks = {
        (m[0], m[1], m[4]) for _, _, v, _ in again.batch.outputs for m in orjson.loads(v)["m"]
    }
    assert marks == {(1, 0, True)}  # only the source at its end, to every SKU partition
    assert again.batch.sources == {}  # no input offsets move
    ingest._sources.update(again.states)
    assert ingest.build_batches({}, ends, generation=3, clock=t + every * 1.5) == {}
    ingest._sources.clear()


def test_a_partition_read_to_its_end_reports_its_consumer_position() -> None:
    """The next offset of a report "read to its end" is where the consumer is (past any
    transaction marker), which the tracker compares with the partition's end offset
    (agents/tracker.py, ``is_trusted``); a partition not at its end reports its last
    record's offset + 1 as before, or none without records."""
    ingest._sources.clear()
    move = {"event_id": "e1", "sku": "A", "reason": "delivery", "quantity": 5, "ts": 1_795_694_400}
    [pending] = ingest.build_batches(
        {TP(STOCK, 0): [record(STOCK, 0, 7, move)]},
        ends={TP(STOCK, 0): True, TP(ORDERS, 0): True, TP(ORDERS, 1): False},
        generation=3,
        positions={TP(STOCK, 0): 9, TP(ORDERS, 0): 4, TP(ORDERS, 1): 12},
    ).values()
    reports = {
        (m[0], m[1]): (m[3], m[4])
        for _, _, v, _ in pending.batch.outputs
        for m in orjson.loads(v)["m"]
    }
    # ORDERS/1 is not at its end: a position there (from a stale merge) is not used.
    assert reports == {(1, 0): (9, True), (0, 0): (4, True), (0, 1): (None, False)}
    assert pending.batch.sources == {TP(STOCK, 0): 8}  # the committed offset is unchanged
    ingest._sources.clear()


def test_envelopes_are_split_below_the_byte_limit() -> None:
    # Ids of 64 characters that JSON escapes (6 bytes each): 2,000 rows would be ~2.4 MB.
    wide = "\x01" * 64
    n = ingest.ENVELOPE_ROWS
    values = [
        {**order(f"{i:04d}{wide[4:]}", f"{i % 7}{wide[1:]}"), "customer_id": wide}
        for i in range(n)
    ]
    batches = ingest.build_batches(
        {TP(ORDERS, 0): [record(ORDERS, 0, i, v) for i, v in enumerate(values)]}
    )
    [pending] = batches.values()
    sent = [v for t, _, v, _ in pending.batch.outputs if t == ENVELOPES]
    assert len(sent) > 4
    assert all(len(v) <= ingest.ENVELOPE_BYTES for v in sent)
    rows = [r for v in sent for r in orjson.loads(v)["r"]]
    assert sorted(r[1] for r in rows) == list(range(n))  # every row, once


def test_a_far_future_or_ancient_ts_is_dead_lettered_and_the_dead_letter_bounded() -> None:
    year_9999 = {**order("o1", "A"), "ts": 253402214400}
    ancient = {**order("o2", "A"), "ts": "1999-12-31T23:59:59Z"}
    huge = b"\x80" * 900_000
    batches = ingest.build_batches(
        {
            TP(ORDERS, 2): [
                record(ORDERS, 2, 0, year_9999),
                record(ORDERS, 2, 1, ancient),
                record(ORDERS, 2, 2, huge, key=b"\x01" * 100_000),
                record(ORDERS, 2, 3, order("o3", "A")),
            ]
        }
    )
    [pending] = batches.values()
    batch = pending.batch
    dead = [orjson.loads(v) for t, _, v, _ in batch.outputs if t == DEAD]
    assert [d["offset"] for d in dead] == [0, 1, 2]
    assert dead[0]["error"].startswith("ts: too far in the future")
    assert "milliseconds" not in dead[0]["error"]
    assert "2000-01-01" in dead[1]["error"]
    assert dead[2]["value_bytes"] == 900_000 and len(dead[2]["value"]) == 16 * 1024
    assert dead[2]["key_bytes"] == 100_000
    assert all(len(v) <= 128 * 1024 for t, _, v, _ in batch.outputs if t == DEAD)
    assert sum(len(orjson.loads(v)["r"]) for t, _, v, _ in batch.outputs if t == ENVELOPES) == 1


@pytest.mark.usefixtures("poisoned_parser")
def test_a_message_the_parser_fails_on_unexpectedly_is_dead_lettered_alone() -> None:
    batches = ingest.build_batches(
        {
            TP(ORDERS, 0): [
                record(ORDERS, 0, 0, order("o1", "A")),
                record(ORDERS, 0, 1, order("poison", "A")),
                record(ORDERS, 0, 2, order("o2", "A")),
            ]
        }
    )
    [pending] = batches.values()
    batch = pending.batch
    [letter] = [orjson.loads(v) for t, _, v, _ in batch.outputs if t == DEAD]
    assert letter["offset"] == 1
    assert letter["error"] == "could not be processed: RuntimeError: a rule nobody foresaw"
    sent = [r for t, _, v, _ in batch.outputs if t == ENVELOPES for r in orjson.loads(v)["r"]]
    assert [r[2] for r in sent] == ["o1", "o2"]


def test_a_report_without_records_rides_in_a_transaction_with_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each input partition's records commit with the transactional producer that owns
    it; a partition with nothing but a report (no offset to move) joins one of them
    instead of opening a transaction of its own."""
    monkeypatch.setattr(ingest.app, "in_transaction", True)
    monkeypatch.setattr(ingest, "transactional_id", lambda tp: f"tid-{tp.partition}")
    ingest._sources.clear()
    batches = ingest.build_batches(
        {TP(ORDERS, 2): [record(ORDERS, 2, 0, order("o1", "A"))]},
        ends={TP(ORDERS, 2): True, TP(STOCK, 0): True, TP(STOCK, 1): True},
        generation=1,
        clock=5.0,
    )
    assert list(batches) == ["tid-2"]
    [pending] = batches.values()
    assert set(pending.states) == {TP(ORDERS, 2), TP(STOCK, 0), TP(STOCK, 1)}
    assert pending.batch.sources == {TP(ORDERS, 2): 1}
    ingest._sources.clear()


async def test_after_a_commit_that_raced_a_rebalance_the_mts_comes_from_the_committed_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch that committed while its partition was being reassigned (commit() answers
    False) may or may not be where the partition resumes; whoever reads on, this worker
    included, takes the mts committed with that offset. Remembering the mts of before
    the batch gave the next events a smaller mts than the batch's own, and the tracker
    then took the batch's events for re-deliveries and skipped them."""
    tp = TP(STOCK, 2)
    base = 1_795_694_400
    committed: dict[TP, str] = {}
    sent: list[Any] = []
    answers = [False, True]

    async def fake_commit(batch: Any, *, source: TP, current: Any = None) -> bool:
        sent.append(batch)
        committed.update(batch.metadata)  # it did land
        return answers.pop(0)

    monkeypatch.setattr(ingest, "commit", fake_commit)
    monkeypatch.setattr(ingest, "assigned_partitions", lambda topics: [tp])
    monkeypatch.setattr(ingest, "committed_metadata", lambda tp: committed.get(tp))
    ingest._sources.clear()
    move = {"sku": "A", "reason": "delivery", "quantity": 5}
    first = [record(STOCK, 2, 0, {**move, "event_id": "m0", "ts": base + 500})]
    second = [record(STOCK, 2, 1, {**move, "event_id": "m1", "ts": base + 100})]
    await ingest.ingest_fetch({tp: first}, lambda: True, {}, 1)
    await ingest.ingest_fetch({tp: second}, lambda: True, {}, 2)
    envelope = [orjson.loads(v) for t, _, v, _ in sent[1].outputs if t == ENVELOPES and v]
    [row] = [r for env in envelope for r in env["r"]]
    assert row[-1] == base + 500  # the running max through offset 0, not offset 1's own ts
    ingest._sources.clear()
