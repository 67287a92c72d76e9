"""The tracker: one place per SKU where orders and stock moves meet (the join), in order.

It consumes the SKU-partitioned envelopes written by agents/ingest.py and puts their
events into the partition's event-time merge (app/domain/rules/merge.py), which releases them
in the contract's order once no input partition can still send an older one. Per batch
of released events it reads the state of the SKUs they touch once, applies each event
with the pure rules (duplicates, stock levels, supplier orders, windows), then writes
each changed key once, every output message, and the input offset (the oldest envelope
still holding a waiting event) in one Kafka transaction (app/engine/transaction.py). An event
whose processing raises is isolated (:func:`isolate`): it becomes a dead letter and the
rest of its batch commits.

The envelopes do not go through a Faust stream: the consumer's batch tap
(app/engine/consumer.py) hands each fetch of them to :func:`tracker` as raw records per
partition, which queues it for the tracker's own task. Faust would only add its
per-message cost and an ack/gap bookkeeping that grows without bound on this
transactional topic (offsets commit in our own transactions, never Faust's). The
partitions of one fetch are independent, so their transactions commit concurrently.

Per partition it keeps a runtime (agents/partition_runtime.py: the open windows, the
merge, counters; rebuilt from the tables after each assignment) and applies released
events with a :class:`~agents.processor.BatchProcessor` (agents/processor.py).

With WINDOW_IDLE_CLOSE_SECONDS set, a timer (:func:`idle_tick`) also closes the due
windows of partitions that received no event for that long: it moves their window
stream time on by the wall time elapsed (app/domain/rules/windows.py) and commits the results
and the new stream time like a batch without input. It runs under the same lock as the
batches, so it never interleaves with a batch of the same partition.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
from faust.types import TP

from agents import waiters
from agents.partition_runtime import (
    PartitionRuntime,
    Waiting,
    all_sources,
    forget_partitions,
    partition_state_key,
    rebuild,
    restorer,
    runtime_for,
    runtimes,
    topic_names,
)
from agents.processor import BatchProcessor
from app.domain.events import format_ts
from app.domain.rules import dead_letters
from app.domain.rules import merge as m
from app.domain.rules import windows as w
from app.engine import metrics, topics
from app.engine.batch_agents import batch_agent
from app.engine.consumer import Fetch, FetchQueue, Records, end_offsets
from app.engine.faults import retriable
from app.engine.instance import app, settings
from app.engine.transaction import Batch, CommitAbandoned, can_commit, commit
from tables import order_status, partition_state

log = logging.getLogger(__name__)


def feed(rt: PartitionRuntime, record: Any) -> int:
    """Put one envelope (see agents/ingest.py) into the partition's merge; return how
    many of its events were new (a re-delivered one was applied or queued before)."""
    doc = orjson.loads(record.value)
    merge = rt.merge
    new = 0
    offset = record.offset
    now = time.monotonic()
    for row in doc["r"]:
        mts = row.pop()
        source_partition = row[-1]
        code = m.ORDERS if row[0] == "o" else m.STOCK
        if merge.push((mts, code, source_partition, row[1]), Waiting(row, offset, now)):
            new += 1
        else:
            rt.counters["replayed"] += 1
    fresh = is_fresh(rt, offset)
    for code, partition, mts, next_offset, at_end, gen in doc["m"]:
        source = (code, partition)
        merge.report(
            source,
            m.NEVER if mts is None else mts,
            next_offset or 0,
            bool(at_end) and is_trusted(rt, fresh, source, next_offset, gen),
        )
    rt.read_upto = offset + 1
    return new


def is_fresh(rt: PartitionRuntime, envelope_offset: int) -> bool:
    """Whether the envelope at ``envelope_offset`` was written after the runtime was
    built: its "read to its end" reports count as they are (:func:`is_trusted`).

    An older envelope is read again after a restart (the committed offset is the oldest
    envelope still holding a waiting event) and may say "read to its end" of an input
    partition that has grown since, e.g. while its reader was down; trusting it, the
    tracker would not wait for that partition's unread records. The generation does not
    tell such a report apart when a restarted worker keeps its place in the group
    (static membership, WORKER_INSTANCE_ID). Such a report counts only if the partition
    had not grown when the runtime was built (:func:`is_trusted`). Its progress (mts,
    next offset) always counts: that is a lower bound, true for ever. Ingest says "read
    to its end" again every second (agents/ingest.py), so a rebuilt partition soon
    learns it afresh about one that had grown.
    """
    return rt.fresh_from is not None and envelope_offset >= rt.fresh_from


def is_trusted(
    rt: PartitionRuntime, fresh: bool, source: m.Source, next_offset: int | None, gen: int
) -> bool:
    """Whether a report "``source`` is read to its end; its next offset is
    ``next_offset``" (of group generation ``gen``) counts, in an envelope that
    :func:`is_fresh` found ``fresh`` or not: a trusted end per report.

    A fresh report counts if it is of the runtime's generation or later. A stale one
    (written before the rebuild) counts if ``next_offset`` is at or past the source's
    end offset read with ``fresh_from`` (``rt.source_ends``, read_committed, i.e. the
    last stable offset): the source held nothing more then. Why that keeps the
    contract's join ("an input partition that has records on the broker not yet read is
    waited for"): ingest sends, as the next offset of a partition read to its end, its
    consumer's position ``N`` (agents/ingest.py); every record below ``N`` was handed on
    to it and its rows went into this envelope's transaction or an earlier one of the
    same partition, all committed before this envelope, so into envelopes of this
    partition at or below this one, which this runtime has fed or (below its committed
    offset) applied before. The stale envelope lies below ``fresh_from``, so it was
    written before the end offsets were read; if ``N`` is at or past the source's end
    then, the source held no stable record that had not been sent: at that moment it
    *was* read to its end, exactly what a fresh report would have said then. (With
    several brokers the end offsets come from each partition's leader, moments apart;
    if the source's was read before the report was written, the report itself is newer
    than the request, so either way the source was read to its end at or after the
    moment the end offsets were asked for.) A source
    that grew meanwhile (its reader down, or slower than its producers) has an end past
    ``N``: the report does not count and the merge waits for a fresh one (at most
    ``REPORT_EVERY_S``) or for the source's records. The generation does not matter for
    this argument: whoever read the source, everything below ``N`` was sent.

    A report of an older release, or one without records before, carries no position
    (``next_offset`` None or below the end) and is not trusted: the old rule. An end
    offset not known (``fresh_from`` unknown, or a source the broker did not answer
    for): not trusted either.
    """
    if fresh:
        return gen >= rt.generation
    end = rt.source_ends.get(source)
    return end is not None and next_offset is not None and next_offset >= end


async def learn_fresh_from(partitions: Iterable[int]) -> None:
    """Set ``fresh_from`` (and ``source_ends``) of the runtimes of ``partitions`` that
    do not know it yet.

    Called before a fetch of envelopes is fed, so every envelope of that fetch (already
    on the broker) is older than the end offset read here. The end offsets of every
    input partition are read in the same request (:func:`is_trusted`). If the broker
    does not answer, ``fresh_from`` stays unknown (no "read to its end" counts) and the
    next fetch asks again.
    """
    unknown = {
        p: rt for p in partitions if (rt := runtimes.get(p)) is not None and rt.fresh_from is None
    }
    if not unknown:
        return
    topic = restorer.topic
    names = topic_names()
    inputs = {TP(names[code], partition): (code, partition) for code, partition in all_sources()}
    try:
        ends = await end_offsets([*(TP(topic, p) for p in sorted(unknown)), *inputs])
    except Exception as exc:
        if not retriable(exc):
            raise
        log.info("End offsets of %s unknown for now (%r); asking again", topic, exc)
        return
    source_ends = {source: ends[tp] for tp, source in inputs.items() if tp in ends}
    for p, rt in unknown.items():
        end = ends.get(TP(topic, p))
        # Rebuilt again meanwhile: that runtime's end offset is read at its next fetch.
        if end is not None and runtimes.get(p) is rt:
            rt.fresh_from = end
            rt.source_ends = dict(source_ends)


DEAD = "d"
"""Row kind of a rejected input message the direct join carries through the merge:
``[DEAD, offset, dead letter, topic code, input partition]`` (agents/direct.py)."""


def apply_event(proc: BatchProcessor, item: Waiting) -> None:
    """Apply one event of the merge (its row: the event, then its input partition)."""
    row = item.row
    proc.src_partition = row[-1]
    if row[0] == DEAD:
        # Once, like any event: the watermark of its input partition says if it was.
        proc.src_topic = proc.orders_topic if row[3] == m.ORDERS else proc.stock_topic
        if not proc.replayed(row[1]):
            proc.batch.emit(topics.dead_letters.get_topic_name(), None, row[2])
    elif row[0] == "o":
        proc.src_topic = proc.orders_topic
        proc.order(row[:-1])
    else:
        proc.src_topic = proc.stock_topic
        proc.stock(row[:-1])


def start(rt: PartitionRuntime) -> BatchProcessor:
    """A new batch of the partition."""
    return BatchProcessor(rt, Batch(table_partition=rt.partition))


def not_idle(rt: PartitionRuntime) -> None:
    """An event was applied: the partition's idle clock starts again. (A progress
    report alone, which every ingest batch sends to every partition, is no event.)"""
    rt.idle_since, rt.idle_base = time.monotonic(), None


def finish(proc: BatchProcessor, tp: TP | None = None) -> Batch:
    """Stage the end-of-batch writes; with ``tp``, also the offset to resume from.

    The partition's document carries a token no other batch has: a commit retried after
    a lost answer reads the document's last committed value to tell whether this batch
    landed (``Batch.landed_by``, app/engine/transaction.py), whatever offsets it commits,
    if any (the direct join commits none on most of its batches).
    """
    token = next_commit_token()
    try:
        proc.finish(token)
    except Exception:
        forget_partitions({proc.partition})
        raise
    key = partition_state_key(proc.partition)
    proc.batch.landed_by = (partition_state, key, token.encode())
    if tp is not None:
        offset = proc.rt.commit_offset()
        if offset is not None:
            proc.batch.sources[tp] = offset
    return proc.batch


_COMMIT_PREFIX = uuid.uuid4().hex[:12]
_commit_count = itertools.count()


def next_commit_token() -> str:
    """Unique per commit of this process (what the partition's document carries)."""
    return f"{_COMMIT_PREFIX}-{next(_commit_count)}"


def isolate(
    rt: PartitionRuntime, applied: list[Waiting], bad: Waiting, exc: Exception
) -> tuple[PartitionRuntime, BatchProcessor]:
    """The poison path: ``bad`` raised while being applied, after ``applied`` in this
    batch. Whatever it half-did is dropped with the runtime, which is rebuilt from the
    tables (the last commit), the batch's earlier events are applied again, and ``bad``
    becomes a dead letter instead, marked applied so a replay skips it too."""
    row = bad.row
    dead = row[0] == DEAD
    code = row[3] if dead else m.ORDERS if row[0] == "o" else m.STOCK
    topic = topic_names()[code]
    log.warning(
        "Event %s/%s offset %s failed and goes to dead-letters: %r",
        topic,
        row[-1],
        row[1],
        exc,
    )
    fresh = rebuild(rt.partition)
    fresh.merge, fresh.generation, fresh.read_upto = rt.merge, rt.generation, rt.read_upto
    fresh.fresh_from, fresh.source_ends = rt.fresh_from, rt.source_ends
    runtimes[rt.partition] = fresh
    proc = start(fresh)
    for item in applied:
        apply_event(proc, item)
    proc.src_topic, proc.src_partition = topic, row[-1]
    if not proc.replayed(row[1]):
        fresh.counters["failed"] += 1
        letter = row[2] if dead else failed_event_letter(topic, row, exc)
        proc.batch.emit(topics.dead_letters.get_topic_name(), None, letter)
    return fresh, proc


def failed_event_letter(topic: str, row: list[Any], exc: Exception) -> bytes:
    """The dead letter of a valid event whose processing failed.

    The tracker has the event as ingest parsed it, not its raw bytes: ``value`` is the
    parsed event as JSON (its fields as validated), ``key`` is null.
    """
    if row[0] == "o":
        _, offset, order_id, customer_id, sku, quantity, price, ts, partition = row
        event: dict[str, Any] = {
            "order_id": order_id,
            "customer_id": customer_id,
            "sku": sku,
            "quantity": quantity,
            "unit_price": price,
            "ts": format_ts(ts),
        }
    else:
        _, offset, event_id, sku, reason, quantity, supplier_id, ts, partition = row
        event = {
            "event_id": event_id,
            "sku": sku,
            "reason": reason,
            "quantity": quantity,
            "supplier_id": supplier_id,
            "ts": format_ts(ts),
        }
    return dead_letters.dead_letter(
        topic,
        partition,
        offset,
        None,
        orjson.dumps(event),
        f"processing failed: {exc!r}",
    )


def batches(tp: TP, records: Sequence[Any]) -> Iterator[Batch]:
    """Feed one fetch of envelopes into the partition's merge, then apply whatever the
    merge releases: one Batch (to commit) per ``BATCH_SIZE`` events, and a last one
    that also moves the committed offset.

    The caller commits each Batch before asking for the next. An event that fails is
    isolated (:func:`isolate`): it becomes a dead letter, the rest goes on.
    """
    rt = runtimes[tp.partition]
    try:
        for record in records:
            feed(rt, record)
    except Exception:
        # Our own envelopes are valid by construction; if one is not, drop the
        # in-memory state (it may be half-fed) and stop rather than guess.
        forget_partitions({tp.partition})
        raise
    yield from released(tp, rt)


def released(tp: TP, rt: PartitionRuntime, last: bool = True) -> Iterator[Batch]:
    """Apply whatever the partition's merge releases: one Batch (to commit) per
    ``BATCH_SIZE`` events; the last one (with ``last`` also when it is empty) also
    moves the committed offset. An event that fails is isolated (:func:`isolate`).

    The caller commits each Batch before asking for the next (the next one reads the
    tables the last one wrote)."""
    while True:
        rt, batch, more = release_one(tp, rt, last)
        if batch is not None:
            yield batch
        if not more:
            return


def release_one(
    tp: TP, rt: PartitionRuntime, last: bool = True
) -> tuple[PartitionRuntime, Batch | None, bool]:
    """Apply what the partition's merge releases, up to ``BATCH_SIZE`` events: (the
    runtime, new if an event was isolated; the Batch, None if nothing was applied and
    not ``last``; whether the batch is full, so more may be released)."""
    proc = start(rt)
    applied: list[Waiting] = []
    now = time.monotonic()
    observe = metrics.MERGE_WAIT.observe
    for _, item in rt.merge.ready():
        if not applied:
            not_idle(rt)
        observe(now - item.arrived)
        try:
            apply_event(proc, item)
        except Exception as exc:
            rt, proc = isolate(rt, applied, item, exc)
            applied = []
            last = True
            continue
        applied.append(item)
        if len(applied) >= settings.batch_size:
            return rt, finish(proc, tp), True
    if applied or last:
        return rt, finish(proc, tp), False
    return rt, None, False


async def track_partition(tp: TP, records: Sequence[Any], current: Callable[[], bool]) -> None:
    """Apply and commit one fetch of envelopes of one partition."""
    if tp.partition not in runtimes or not current():
        return  # revoked meanwhile: Faust seeks back to the committed offset
    for batch in batches(tp, records):
        if not await _commit(tp, batch, current) or not current():
            return


async def _commit(tp: TP, batch: Batch, current: Callable[[], bool] | None = None) -> bool:
    """Commit (retried through broker outages); False if given up (a rebalance)."""
    try:
        if not await commit(batch, source=tp, current=current):
            # Committed while a rebalance took the partition (its stores untouched): the
            # runtime must be rebuilt from the changelogs, this batch included.
            forget_partitions({tp.partition})
            return False
    except CommitAbandoned:
        # Not committed, and the partition is no longer ours: its next owner (or this
        # worker, if it comes back) resumes from the committed offsets.
        forget_partitions({tp.partition})
        return False
    except BaseException:
        # The in-memory runtime already holds this batch; Kafka may not.
        forget_partitions({tp.partition})
        raise
    notify_waiters(batch)
    return True


def notify_waiters(batch: Batch) -> None:
    """Wake the ``GET /orders/{id}?wait=S`` requests for the orders this batch committed."""
    if waiters.orders:
        waiters.orders.notify(key for table, key in batch.table_writes if table is order_status)


async def idle_tick(now: float | None = None) -> int:
    """Idle close: commit the windows that idleness closed, per owned partition.

    A partition idle for WINDOW_IDLE_CLOSE_SECONDS gets the window stream time
    ``w.idle_stream_time`` gives; if that closes a held window, the stream time moves
    there and one transaction writes the window results and the tables
    (``BatchProcessor.finish``) with no input offsets. Otherwise nothing moves, so the
    stream time in memory is always the committed one. Runs under the tracker's lock
    and each partition's (``partition_lock``), between batches. Returns how many
    partitions committed.
    """
    idle_s = settings.window_idle_close_seconds
    if idle_s <= 0:
        return 0
    committed = 0
    async with _tracker_lock:
        now = time.monotonic() if now is None else now
        for partition in sorted(runtimes):
            async with partition_lock(partition):
                committed += await _idle_close(partition, now, idle_s)
    return committed


async def _idle_close(partition: int, now: float, idle_s: float) -> int:
    """:func:`idle_tick` for one partition, under its locks: 1 if it committed."""
    rt = runtimes.get(partition)
    if rt is None or len(rt.merge):
        # Events wait for a lagging input partition: not idle, and moving its stream
        # time on would make them late.
        return 0
    if rt.idle_base is None:
        rt.idle_base = rt.windows.stream_time
    target = w.idle_stream_time(rt.idle_base, now - rt.idle_since, idle_s)
    due = rt.windows.next_close_at
    if target is None or due is None or due > target:
        return 0
    tp = TP(restorer.topic, partition)
    if not can_commit(tp):
        return 0
    rt.windows.advance(target)
    await _commit(tp, finish(BatchProcessor(rt, Batch(table_partition=partition))))
    return 1


async def _idle_timer() -> None:
    try:
        await idle_tick()
    except Exception as exc:
        # As for a failed batch: what was applied is unknown; restart from the tables.
        await app.crash(exc)
        raise


if settings.window_idle_close_seconds > 0:
    app.timer(min(1.0, settings.window_idle_close_seconds / 2))(_idle_timer)


FETCHES_QUEUED = 4
"""Most fetches of envelopes waiting for the tracker (the consumer waits when full)."""

_fetches = FetchQueue(FETCHES_QUEUED)
_tracker_lock = asyncio.Lock()
"""Held while a fetch is applied and committed, and by :func:`idle_tick`."""
_partition_locks: dict[int, asyncio.Lock] = {}


def partition_lock(partition: int) -> asyncio.Lock:
    """Held while a batch of ``partition`` is applied and committed by the direct join
    (agents/direct.py), and by :func:`idle_tick` for that partition."""
    lock = _partition_locks.get(partition)
    if lock is None:
        lock = _partition_locks[partition] = asyncio.Lock()
    return lock


@batch_agent(
    topics.events_by_sku,
    name="tracker",
    help="events-by-sku -> tables + order-status, stock-levels, supplier-orders, "
    "expedites, window-results (the join, in event-time order)",
)
async def tracker(records: Records, current: Callable[[], bool]) -> None:
    """The batch agent: queue the fetch for :func:`_run_tracker`.

    The tracker does not run in the consumer's fetch loop: applying and committing
    thousands of events (or restoring a partition) would hold back ingest, which then
    reads orders and stock moves produced far apart in one fetch (and loses their
    order across the two topics). One task applies the queued fetches in order; each
    still checks ``current()`` before it applies anything.
    """
    if settings.join_read == "direct":
        # The direct join reads the input itself (agents/direct.py); this topic only
        # gives the tracker its partitions (and their tables), and holds nothing new.
        return
    await _fetches.put(Fetch(records, current))


async def _run_tracker() -> None:
    while True:
        # Fetches queued during the last commit are applied as one (fewer, larger
        # transactions when the tracker falls behind).
        fetch = await _fetches.take(settings.batch_size)
        try:
            async with _tracker_lock:
                await track(fetch.records, fetch.current)
        except Exception as exc:
            # What a failed batch applied is unknown: stop the worker; a restart
            # resumes from the offsets committed with the last complete batch.
            await app.crash(exc)
            raise


app.task(_run_tracker)


async def track(records: Records, current: Callable[[], bool]) -> None:
    """events-by-sku -> tables + order-status, stock-levels, supplier-orders, expedites,
    window-results: one fetch at once, the partitions' transactions concurrently."""
    # The first batch after an assignment restores each partition's tables; they are
    # independent, so restore them concurrently.
    await asyncio.gather(*(runtime_for(tp.partition) for tp in records))
    await learn_fresh_from(tp.partition for tp in records)
    if not current():
        # A rebalance while restoring: these records may belong to another worker now,
        # and a runtime restored across a revocation may miss its writes.
        forget_partitions({tp.partition for tp in records})
        return
    await asyncio.gather(*(track_partition(tp, recs, current) for tp, recs in records.items()))
