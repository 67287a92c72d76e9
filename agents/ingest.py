"""Ingest: validate ``orders`` and ``stock``, dead-letter the bad, regroup the good by SKU.

This is the first half of the join. Input keys are ignored (the contract lets producers
key messages any way); every valid event is routed by the hash of its SKU to the
partition of the internal ``<app>-events-by-sku`` topic that owns the SKU, so both
streams of one SKU meet in one place (agents/tracker.py), which applies them in the
contract's merge order (app/domain/rules/merge.py).

Events travel in envelopes: one message per (transactional producer, SKU partition) per
batch, ``{"r": rows, "m": reports}``. A row is an event in compact form (see
``envelope_row``) followed by its input partition and its merge key's ``mts``; a report
is one input partition's progress, ``[topic code, partition, mts, next offset, at end,
group generation]``; the next offset of a partition read to its end is the consumer's
position (past any transaction markers), so the tracker can compare it with the
partition's end offset (agents/tracker.py, ``is_trusted``). Every SKU partition gets
the reports, also one no row of the batch went to: that is how the tracker learns that
an input partition read by any worker has moved past an event, or has nothing more to
give. A partition read to its end says so again every second (``REPORT_EVERY_S``) while
nothing changes, since a tracker partition rebuilt after a restart trusts an older
report only if the partition has not grown since.

An input partition's ``mts`` so far is the metadata of its committed offset, in the same
transaction as the envelopes, so whoever reads the partition next (after a crash or a
rebalance) gives each event the same key.

Ingest is not a Faust agent: it sees every raw input message, and Faust's per-message
machinery (Message objects, conductor, stream queues, acks) alone capped it near 3.8k
messages/s. The consumer's batch tap (app/engine/consumer.py) hands it each fetch as lists of
raw records per partition instead, and also a fetch without any (so a partition that
reached its end can say so); it commits the input offsets itself, in the transaction
that writes the envelopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP

from agents.rows import (
    ORDER,
    STOCK,
    dead_letter,
    envelope_row,
    mts_from_metadata,
    mts_metadata,
    unforeseen,
)
from app.domain.events import InvalidEvent
from app.domain.rules import merge
from app.engine import metrics, topics
from app.engine.batch_agents import batch_agent
from app.engine.consumer import (
    Fetch,
    FetchQueue,
    Records,
    assigned_partitions,
    committed_metadata,
    read_to_end_at,
)
from app.engine.instance import app, settings
from app.engine.producer import own_producers
from app.engine.transaction import Batch, CommitAbandoned, commit, transactional_id

ENVELOPE_ROWS = 2_000
"""Most rows per envelope (~250 kB with ordinary ids)."""

ENVELOPE_BYTES = 512 * 1024
"""Most bytes per envelope: a row of 64-character ids of escaped characters is ~1.5 kB,
so a full envelope of them would pass Kafka's 1 MB limit; it is split instead."""


def envelopes(rows: list[list[Any]], marks: list[list[Any]]) -> list[bytes]:
    """``rows`` as envelopes ``{"r": rows, "m": reports}`` of at most ENVELOPE_ROWS rows
    and ENVELOPE_BYTES bytes, in order; the progress reports ride on the last one, after
    every row they cover (always one envelope, also without rows). A part that comes out
    too large is halved until it fits (a row is ~2 kB at most, app/domain/events.py bounds
    every field)."""
    parts: list[list[list[Any]]] = []
    for i in range(0, len(rows), ENVELOPE_ROWS):
        _split_into(rows[i : i + ENVELOPE_ROWS], parts)
    if not parts:
        parts.append([])
    last = len(parts) - 1
    return [
        orjson.dumps({"r": part, "m": marks if i == last else []}) for i, part in enumerate(parts)
    ]


def _split_into(rows: list[list[Any]], out: list[list[list[Any]]]) -> None:
    if len(rows) == 1 or len(orjson.dumps(rows)) <= ENVELOPE_BYTES - 64 * 1024:
        out.append(rows)
        return
    half = len(rows) // 2
    _split_into(rows[:half], out)
    _split_into(rows[half:], out)


TOPIC_CODE = {ORDER: merge.ORDERS, STOCK: merge.STOCK}


@dataclass(slots=True)
class SourceState:
    """Ingest's memory of one input partition it reads (see :func:`build_batches`)."""

    mts: float = merge.NEVER
    """Largest ``ts`` of the partition's valid events up to the last committed batch."""
    reported: tuple[int, bool] | None = None
    """(generation, at_end) of the last progress report the tracker got from here."""
    reported_at: float = 0.0
    """time.monotonic() of that report."""


REPORT_EVERY_S = 1.0
"""How often an input partition read to its end says so again while nothing changes: a
tracker partition trusts "read to its end" from envelopes written before it was
(re)built only if the partition has not grown since (agents/tracker.py, ``is_trusted``),
so after a restart or a rebalance it waits at most this long to learn it again about
one that has."""


def has_news(state: SourceState | None, generation: int, at_end: bool, now: float) -> bool:
    """Whether an input partition's progress is worth a report without new records: it
    changed since the last report, or it is read to its end and last said so
    REPORT_EVERY_S ago or more (``now``: time.monotonic())."""
    if state is None or state.reported != (generation, at_end):
        return True
    return at_end and now - state.reported_at >= REPORT_EVERY_S


_sources: dict[TP, SourceState] = {}


def source_state(tp: TP) -> SourceState:
    state = _sources.get(tp)
    if state is None:
        # The committed offset carries the partition's largest ts (see mts_metadata), so
        # a restarted or new owner gives every event the same merge key as before.
        state = _sources[tp] = SourceState(mts_from_metadata(committed_metadata(tp)))
    return state


@dataclass(slots=True)
class Pending:
    """One transaction of ingest and what ingest remembers once it committed."""

    source: TP
    batch: Batch
    states: dict[TP, SourceState] = field(default_factory=dict)


def build_batches(
    records: Records,
    ends: Mapping[TP, bool] | None = None,
    generation: int = 0,
    clock: float | None = None,
    positions: Mapping[TP, int] | None = None,
) -> dict[str, Pending]:
    """Group one fetch of input records into one Batch per transactional producer.

    Every valid event becomes a row for the SKU partition that owns its SKU, tagged with
    its merge key's ``mts`` (agents/tracker.py applies rows in merge-key order). Every
    input partition that sent rows, or that has news (:func:`has_news`; ``clock``: now,
    time.monotonic()), reports its progress to *every* SKU partition: a partition of the
    SKU-keyed stream can apply an event only once it knows no input partition can still
    send an older one. ``positions``: where the partitions read to their end were read to
    (:func:`~app.engine.consumer.read_to_end_at`), their reports' next offset.
    """
    ends = ends or {}
    positions = positions or {}
    clock = time.monotonic() if clock is None else clock
    by_tid: dict[str, Pending] = {}
    in_transaction = app.in_transaction
    dl_topic = topics.dead_letters.get_topic_name()
    orders_topic = topics.orders.get_topic_name()
    target_topic = topics.events_by_sku.get_topic_name()
    sku_partition = topics.sku_partition
    n_targets = topics.events_by_sku_partitions()
    marks_by_tid: dict[str, list[list[Any]]] = {}
    # One clock reading per fetch: the bound on ts is the worker's clock (the contract).
    now = time.time()
    max_future_s = settings.max_future_seconds
    rows_by_tid: dict[str, dict[int, list[list[Any]]]] = {}

    def pending_for(tp: TP) -> tuple[str, Pending]:
        tid = transactional_id(tp) if in_transaction else ""
        found = by_tid.get(tid)
        if found is None:
            found = by_tid[tid] = Pending(tp, Batch())
            marks_by_tid[tid] = []
            rows_by_tid[tid] = {}
        return tid, found

    # Sources with records first: one with only a report to make moves no offset, so it
    # rides along in any transaction of this fetch, and a report said again every
    # second costs no transaction of its own while records flow.
    for tp in sorted({*records, *ends}, key=lambda tp: (not records.get(tp), tp)):
        batch_records = records.get(tp, ())
        state = source_state(tp)
        at_end = ends.get(tp, False)
        if not batch_records and not has_news(state, generation, at_end, clock):
            continue  # nothing new to say
        if batch_records or not by_tid:
            tid, pending = pending_for(tp)
        else:
            tid = next(iter(by_tid))
            pending = by_tid[tid]
        batch = pending.batch
        is_order = tp.topic == orders_topic
        code = merge.ORDERS if is_order else merge.STOCK
        mts = state.mts
        by_partition = rows_by_tid[tid]
        for record in batch_records:
            try:
                sku, row = envelope_row(is_order, record.offset, record.value, now, max_future_s)
            except InvalidEvent as exc:
                batch.emit(dl_topic, None, dead_letter(record, str(exc)))
                continue
            except Exception as exc:  # a value no rule foresaw: still only its own fault
                batch.emit(dl_topic, None, dead_letter(record, unforeseen(record, exc)))
                continue
            ts = row[-1]
            if ts > mts:
                mts = ts
            row.append(tp.partition)
            row.append(mts)
            target = sku_partition(sku)
            found = by_partition.get(target)
            if found is None:
                by_partition[target] = [row]
            else:
                found.append(row)
        next_offset = None
        if batch_records:
            next_offset = batch_records[-1].offset + 1
            batch.consumed(tp, batch_records[-1].offset, mts_metadata(mts))
        position = positions.get(tp) if at_end else None
        if position is not None and (next_offset is None or position > next_offset):
            next_offset = position
        shown_mts = None if mts == merge.NEVER else mts
        marks_by_tid[tid].append([code, tp.partition, shown_mts, next_offset, at_end, generation])
        pending.states[tp] = SourceState(mts, (generation, at_end), clock)
    for tid, pending in by_tid.items():
        batch = pending.batch
        by_partition = rows_by_tid[tid]
        marks = marks_by_tid[tid]
        for partition in range(n_targets):
            for envelope in envelopes(by_partition.get(partition, []), marks):
                batch.emit(target_topic, None, envelope, partition)
    return by_tid


async def ingest(records: Records, current: Callable[[], bool]) -> None:
    """The tap handler: queue the fetch (and every input partition's end) for
    :func:`_run_ingest`.

    Called for every fetch, also one without records of these topics, so that an input
    partition that reaches its end says so. Ingest does not commit in the consumer's
    fetch loop: the tracker's envelopes come through that loop too, and while it waited
    for an ingest commit, an envelope already committed waited for the *next* ingest
    batch's commit before the tracker saw it (one whole ingest cycle per order).
    ``read_to_end_at`` is read here, between two fetches, as it must be: the records it
    covers are the ones queued.
    """
    generation = app.consumer_generation_id
    assigned = assigned_partitions(INPUTS)
    positions = read_to_end_at(assigned)
    ends = {tp: at is not None for tp, at in positions.items()}
    clock = time.monotonic()
    if not records and not any(
        has_news(_sources.get(tp), generation, ends[tp], clock) for tp in assigned
    ):
        return  # the common idle case: nothing new
    if not current():
        return  # a rebalance began: Faust seeks back to the committed offsets
    read_to = {tp: at for tp, at in positions.items() if at is not None}
    await _fetches.put(Fetch(records, current, ends, generation, read_to))


FETCHES_QUEUED = 4
"""Most fetches waiting for ingest (the consumer's fetch loop waits when full)."""

_fetches = FetchQueue(FETCHES_QUEUED)


async def _run_ingest() -> None:
    """Ingest every queued fetch in order, those queued meanwhile as one batch."""
    while True:
        fetch = await _fetches.take(settings.batch_size)
        try:
            await ingest_fetch(
                fetch.records, fetch.current, fetch.ends, fetch.generation, fetch.positions
            )
        except Exception as exc:
            # What a failed batch committed is unknown: stop the worker; a restart
            # resumes from the offsets committed with the last complete batch.
            await app.crash(exc)
            raise


async def ingest_fetch(
    records: Records,
    current: Callable[[], bool],
    ends: Mapping[TP, bool],
    generation: int,
    positions: Mapping[TP, int] | None = None,
) -> None:
    """orders + stock -> events-by-sku (valid) or dead-letters (invalid), one fetch (or
    several queued ones) at once: one transaction per transactional producer; they are
    independent, so they commit concurrently."""
    _forget_unassigned(assigned_partitions(INPUTS))
    if not current():
        return  # a rebalance began: Faust seeks back to the committed offsets
    newest_ts = metrics.count_input(records) if records else None
    pendings = build_batches(records, ends, generation, time.monotonic(), positions)
    commits = []
    for pending in pendings.values():
        pending.batch.newest_input_ts = newest_ts
        commits.append(commit(pending.batch, source=pending.source, current=current))
    results = await asyncio.gather(*commits, return_exceptions=True)
    failure: BaseException | None = None
    for pending, result in zip(pendings.values(), results, strict=True):
        if result is True:
            _sources.update(pending.states)
            continue
        if isinstance(result, BaseException) and not isinstance(result, CommitAbandoned):
            failure = failure or result
        # False or CommitAbandoned: the partition left this worker during the commit;
        # Faust seeks its next owner to the committed offset. That owner may be this
        # worker again: its memory of these partitions is of before this batch, which
        # may or may not have committed, so it must take the mts committed with the
        # offset it resumes from, like any new owner. Kept, a batch that did commit
        # would give the next events a smaller mts than its own: their merge keys would
        # no longer grow within the partition, and the tracker would take this batch's
        # events, released after them, for re-deliveries (seen in the join-order test
        # with two workers and BATCH_SIZE=100: 100 stock moves never applied).
        for tp in pending.states:
            _sources.pop(tp, None)
    if failure is not None:
        raise failure


def _forget_unassigned(assigned: Iterable[TP]) -> None:
    # A partition that left and comes back resumes from its committed offset and mts.
    keep = set(assigned)
    for tp in [tp for tp in _sources if tp not in keep]:
        del _sources[tp]


INPUTS = (topics.orders.get_topic_name(), topics.stock.get_topic_name())

if settings.join_read == "repartition":
    batch_agent(
        topics.orders,
        topics.stock,
        name="ingest",
        help="orders + stock -> events-by-sku (valid, per SKU partition) or dead-letters",
        every_fetch=True,
    )(ingest)
    app.task(_run_ingest)
    # Ingest commits on producers of its own, side by side with the tracker's.
    own_producers(INPUTS)
