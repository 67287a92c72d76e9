"""One batch, one Kafka transaction: outputs, table changes and consumer offsets together.

Faust's exactly-once mode routes each produced message to the transactional producer of
its *destination* partition and commits on a timer, so a batch's outputs and its input
offsets can land in different transactions (and a timer commit can land mid-batch).
Here a batch is staged in memory and then written under the lock of the transactional
producer that owns its *source* partition: every output, every changelog record and the
next input offsets, then ``commit_transaction``. A crash at any point leaves either all
of the batch or none of it; read_committed readers (including table recovery) never see
half a batch.

In ``at_least_once`` mode the same batch is produced with the plain producer, then its
input offsets are committed; the rules' duplicate memory then absorbs replays.

A commit that fails because of the cluster (a broker down, restarting or lost, no
leader, a fenced producer) does not stop the worker: :func:`commit` replaces the
transactional producer (the new one fences the old and ends its transaction) and writes
the same batch again, with backoff, until it commits or its partition leaves the worker.
It reports to app/engine/health.py meanwhile, so ``/health`` says why nothing progresses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.structs import TopicPartition
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from app.engine import health, metrics
from app.engine.checkpoint import Position, position_key
from app.engine.consumer import rebalancing
from app.engine.faults import retriable
from app.engine.instance import app, settings
from app.engine.producer import producer_id_suffix
from app.engine.restore import committed_readers, known_cluster_id, stable_end_offsets
from app.engine.stores import LOCAL_PREFIX, put_many

MAX_RECORD_BYTES = 900 * 1024
"""Largest key + value a batch accepts for one record (output or table change): below
the broker's default ``message.max.bytes`` (1 MiB) with room for the record overhead."""


class RecordTooLarge(ValueError):
    """A record staged in a :class:`Batch` is larger than :data:`MAX_RECORD_BYTES`.

    Raised by :meth:`Batch.emit` / :meth:`Batch.put` as the record is staged, so it can
    never reach a commit (where the broker would refuse the whole transaction); the
    caller can drop the event that produced it and dead-letter it instead.
    """

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(
            f"a record for {topic} would be {size} bytes, more than the limit of "
            f"{MAX_RECORD_BYTES} bytes"
        )
        self.topic = topic
        self.size = size


log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    """What one batch writes. Nothing reaches Kafka or a table before :meth:`commit`."""

    sources: dict[TP, int] = field(default_factory=dict)
    """Input partition -> offset of the next message to read after this batch."""
    outputs: list[tuple[str, bytes | None, bytes, int | None]] = field(default_factory=list)
    """(topic, key, value, partition) in production order; partition None = by key."""
    table_writes: dict[tuple[Any, bytes], bytes | None] = field(default_factory=dict)
    """(table, key) -> value (None deletes); one write per key per batch."""
    table_partition: int | None = None
    """Partition of the tables' changelogs this batch writes (its source partition)."""
    newest_input_ts: float | None = None
    """Kafka timestamp (epoch seconds) of the newest input message, for the latency metric."""
    metadata: dict[TP, str] = field(default_factory=dict)
    """Input partition -> metadata committed with its offset (exactly-once mode only)."""
    written_upto: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) -> the offset after the last record the commit wrote there,
    known once it committed (the changelog positions the stores record)."""
    landed_by: tuple[Any, bytes, bytes] | None = None
    """``(table, key, token)``: the batch writes ``key`` of ``table`` with a value that
    holds ``token``, which no other batch writes. How a retried commit tells whether
    an earlier attempt landed (:func:`_committed_already`) without committing offsets:
    the changelog's last committed value of ``key`` holds ``token``."""

    def consumed(self, tp: TP, offset: int, metadata: str | None = None) -> None:
        if offset + 1 > self.sources.get(tp, -1):
            self.sources[tp] = offset + 1
        if metadata is not None:
            self.metadata[tp] = metadata

    def emit(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        """Stage an output record; raises :class:`RecordTooLarge` (nothing staged)."""
        if len(value) + (0 if key is None else len(key)) > MAX_RECORD_BYTES:
            raise RecordTooLarge(topic, len(value) + (0 if key is None else len(key)))
        self.outputs.append((topic, key, value, partition))

    def put(self, table: Any, key: bytes, value: bytes | None) -> None:
        """Stage a table change; raises :class:`RecordTooLarge` (nothing staged). A local
        key (``app.engine.stores.LOCAL_PREFIX``) goes to the store only, never to the changelog.
        """
        size = len(key) + (0 if value is None else len(value))
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"table {getattr(table, 'name', table)}", size)
        self.table_writes[(table, key)] = value


def transactional_id(tp: TP) -> str:
    """The id of the transactional producer that commits the batches of ``tp``: Faust's
    ``<app id>-<topic group>-<partition>``, plus a suffix for a topic of
    :func:`app.engine.producer.own_producers` (as BatchTransactionManager starts them)."""
    group = app.assignor.group_for_topic(tp.topic)
    return f"{app.conf.id}-{group}-{tp.partition}{producer_id_suffix(tp.topic)}"


def owned(source: TP) -> bool:
    """Whether ``source`` is assigned to this worker outside a rebalance (its producer
    may still have to be started: :func:`commit` starts a missing one)."""
    consumer: Any = app.consumer
    try:
        assigned = consumer.assignment()
    except ConsumerNotStarted:
        return False
    return source in assigned and bool(consumer.flow_active) and not rebalancing()


def can_commit(source: TP) -> bool:
    """Whether a batch that is not driven by input (idle close) may commit for ``source``.

    True while ``source`` is assigned to this worker outside a rebalance and, with
    transactions, its transactional producer is running. A batch of input records
    knows this from its fetch (``current()``); a timer has to ask.
    """
    consumer: Any = app.consumer
    try:
        assigned = consumer.assignment()
    except ConsumerNotStarted:
        return False
    if source not in assigned or not consumer.flow_active or rebalancing():
        return False
    if app.in_transaction:
        producer: Any = app.producer
        return transactional_id(source) in producer._transaction_producers
    return True


class CommitAbandoned(Exception):
    """A batch's commit was given up: its source partition left this worker (a rebalance)
    or the worker is stopping, while the commit was being retried.

    Nothing of the batch may be assumed committed: the caller drops what it applied in
    memory, and the partition's next owner (or this worker after a restart) starts from
    the offsets committed with the last batch that did commit.
    """


RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0
ATTEMPT_TIMEOUT_S = 60.0
"""Longest one attempt may take before it counts as failed (its producer is replaced).

Faust's producer waits up to 20 minutes for a request; an attempt that hangs on a
broker that went away must not hold its partitions that long after the broker is back.
"""
LOG_EVERY_S = 30.0
"""While a producer keeps failing, one WARNING line per this many seconds, not per try."""


def _describe(exc: BaseException) -> str:
    """``Type: message (Cause: message)``, once each (aiokafka's messages already start
    with their type), at most 300 characters."""

    def one(e: BaseException) -> str:
        name, text = type(e).__name__, str(e)
        return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")

    cause = exc.__cause__ or exc.__context__
    text = one(exc)
    if cause is not None and not isinstance(cause, asyncio.CancelledError):
        text += f" ({one(cause)})"
    return text[:300]


async def commit(batch: Batch, *, source: TP, current: Callable[[], bool] | None = None) -> bool:
    """Write ``batch`` atomically with its input offsets.

    ``source`` picks the transactional producer; every TP in ``batch.sources`` must
    share its transactional id (same partition number and topic group).

    A failure of the cluster (a broker down or restarting, no leader, a fenced or broken
    producer) is not fatal: the producer is replaced and the same batch is written
    again, with backoff, for as long as it takes. Retrying the *same* batch keeps every
    in-memory effect of it valid, so nothing is sought back or rebuilt; an attempt that
    may have committed after all is checked against the committed offsets first, so a
    batch never lands twice. While the source partition stays with this worker
    (``current()``, default: it is still assigned) and the worker runs, this returns
    only once the batch committed; otherwise it raises :class:`CommitAbandoned`.
    Any other error stops the worker, as before.

    The local table stores get the batch's writes only once it committed, and only if
    the partition is still current then: True. False means it committed while a
    rebalance took the partition away (and maybe gave it back, with a restore already
    under way): the stores were left alone and the caller must drop what it keeps in
    memory, so the partition is restored from its changelogs, this batch included.
    Writing earlier, a retried or abandoned attempt raced the partition's restore and
    left a store mixing states (a level off by a batch's orders).
    """
    if not batch.sources and not batch.outputs and not batch.table_writes:
        return True
    key = transactional_id(source) if app.in_transaction else "producer"
    delay = RETRY_FIRST_S
    attempts = 0
    first_failure = last_log = 0.0
    while True:
        try:
            if app.in_transaction:
                await asyncio.wait_for(
                    _commit_transactional(batch, source, retry=attempts > 0), ATTEMPT_TIMEOUT_S
                )
            else:
                await asyncio.wait_for(_commit_plain(batch), ATTEMPT_TIMEOUT_S)
            break
        except Exception as exc:
            if not retriable(exc):
                # What the caller applied in memory is not in Kafka: only a restart
                # (which rebuilds tables from their changelogs) makes them agree.
                health.commit_ended(key)
                app.log.exception("Batch commit failed, stopping the worker: %r", exc)
                await app.crash(exc)
                raise
            attempts += 1
            reason = _describe(exc)
            health.commit_failed(key, reason)
            now = time.monotonic()
            if attempts == 1:
                first_failure = last_log = now
                log.warning("Commit of %s failed, retrying until it succeeds: %s", key, reason)
            elif now - last_log >= LOG_EVERY_S:
                last_log = now
                log.warning(
                    "Commit of %s still failing after %d attempts (%.0f s): %s",
                    key,
                    attempts,
                    now - first_failure,
                    reason,
                )
            if not _still_ours(source, current):
                health.commit_ended(key)
                log.info("Gave up the commit of %s: its partition left this worker", key)
                raise CommitAbandoned(key) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            if not _still_ours(source, current):
                health.commit_ended(key)
                raise CommitAbandoned(key) from exc
    if attempts:
        log.warning(
            "Commit of %s succeeded after %d failed attempts (%.1f s)",
            key,
            attempts,
            time.monotonic() - first_failure,
        )
    health.commit_ended(key)
    metrics.committed(batch.outputs, batch.sources, batch.newest_input_ts)
    if not _still_current(source, current):
        log.info("The batch of %s committed after its partition was reassigned", key)
        return False
    _write_stores(batch)
    return True


def _still_ours(source: TP, current: Callable[[], bool] | None) -> bool:
    """Whether this worker still processes ``source`` and is not stopping."""
    if app.should_stop or health.state.stopping:
        return False
    return _still_current(source, current)


def _still_current(source: TP, current: Callable[[], bool] | None) -> bool:
    """``current()``, or by default: ``source`` is still assigned to this worker."""
    if current is not None:
        return current()
    consumer: Any = app.consumer
    try:
        return source in consumer.assignment()
    except Exception:
        return False


def _by_table(batch: Batch) -> dict[Any, list[tuple[bytes, bytes | None]]]:
    by_table: dict[Any, list[tuple[bytes, bytes | None]]] = {}
    for (table, key), value in batch.table_writes.items():
        writes = by_table.get(table)
        if writes is None:
            writes = by_table[table] = []
        writes.append((key, value))
    if by_table:
        assert batch.table_partition is not None, "a batch that writes tables needs one"
    return by_table


def _changelog_records(batch: Batch) -> Iterator[tuple[str, bytes, bytes | None, int | None]]:
    """The changelog records of the batch's table changes."""
    partition = batch.table_partition
    for table, writes in _by_table(batch).items():
        topic = table.changelog_topic.get_topic_name()
        for key, value in writes:
            if not key.startswith(LOCAL_PREFIX):
                yield topic, key, value, partition


def _write_stores(batch: Batch) -> None:
    """Write the batch's table changes to the local stores (once it committed), each
    table's with the changelog position after them, in one write batch.

    A table whose position is unknown (an earlier attempt committed and only its answer
    was lost; the cluster id not learnt yet) keeps the position it had: an older
    position is always safe, its restore just replays a little more (app/engine/checkpoint.py).
    Positions can be recorded here at all because each changelog partition has one
    writer, the fenced transactional producer of its source partition: everything
    between the store's last position and this batch's records is what this worker
    already wrote to the store, or markers and aborted records.
    """
    by_table = _by_table(batch)
    partition = batch.table_partition
    if not by_table or partition is None:
        return
    cluster = known_cluster_id(settings.broker_host_ports)
    now = time.time()
    for table, writes in by_table.items():
        topic = table.changelog_topic.get_topic_name()
        upto = batch.written_upto.get((topic, partition))
        if upto is not None and cluster is not None:
            position = Position(upto, now, cluster, topic)
            writes.append((position_key(partition), position.encode()))
        put_many(table, writes, partition)


def _apply_to_stores(batch: Batch) -> Iterator[tuple[str, bytes, bytes | None, int | None]]:
    """Write the batch's table changes to the local stores; yield their changelog
    records (the agent tests' stand-in for a committed transaction)."""
    _write_stores(batch)
    yield from _changelog_records(batch)


async def _commit_transactional(batch: Batch, source: TP, *, retry: bool) -> None:
    tid = transactional_id(source)
    # Faust's aiokafka driver keeps one transactional producer (and lock) per id.
    producer: Any = app.producer
    lock = producer._trn_locks.get(tid)
    if lock is None:
        lock = producer._trn_locks[tid] = asyncio.Lock()
    waited_from = time.perf_counter()
    async with lock:
        metrics.PRODUCER_WAIT.observe(time.perf_counter() - waited_from)
        txn = await _ready_producer(producer, tid)
        if retry and (batch.sources or batch.landed_by) and await _committed_already(batch):
            log.warning("An earlier attempt of the batch of %s had committed after all", tid)
            return
        try:
            placed: list[tuple[str, int, int]] = []
            sent = await _send_batched(
                txn, chain(batch.outputs, _changelog_records(batch)), placed
            )
            if batch.sources:
                offsets = {
                    TopicPartition(tp.topic, tp.partition): (o, batch.metadata.get(tp, ""))
                    for tp, o in batch.sources.items()
                }
                sent.append(txn.send_offsets_to_transaction(offsets, app.conf.id))
            # aiokafka would commit a transaction even if one of its record batches
            # failed; every one must have been written first.
            started = time.perf_counter()
            answers = await asyncio.gather(*sent)
            written = time.perf_counter()
            await txn.commit_transaction()
            metrics.observe_commit(written - started, time.perf_counter() - written)
            batch.written_upto = _written_upto(placed, answers)
        except BaseException:
            # The open transaction may hold part of this batch (also when the task was
            # cancelled, e.g. the consumer's fetcher on shutdown), and the next commit on
            # this producer would commit it too. Nothing may use it again: it is replaced
            # before the next commit, and the new producer's initialisation fences it
            # and makes Kafka abort the transaction.
            _broken.add(tid)
            raise
        try:
            await txn.begin_transaction()
        except Exception as exc:  # pragma: no cover - begin is local in aiokafka
            # The batch is committed; the next one gets a new producer.
            log.warning("Could not begin the next transaction of %s: %r", tid, exc)
            _broken.add(tid)


_broken: set[str] = set()
"""Transactional ids whose producer failed mid-transaction and must be replaced."""


async def _ready_producer(producer: Any, tid: str) -> Any:
    """The transactional producer of ``tid``, in a transaction; replaced first when it
    failed before, is missing (a failed start) or cannot begin one."""
    txn = producer._transaction_producers.get(tid)
    if txn is not None and tid not in _broken:
        if txn._txn_manager.is_in_transaction():
            return txn
        try:
            await txn.begin_transaction()
            return txn
        except Exception as exc:
            log.info("Producer %s cannot begin a transaction (%r); replacing it", tid, exc)
    if txn is not None:
        # Out of the map first, so no one else picks the broken producer meanwhile.
        if producer._transaction_producers.get(tid) is txn:
            del producer._transaction_producers[tid]
        await _stop_quietly(txn)
    fresh = producer._new_producer(transactional_id=tid)
    try:
        # InitProducerId: bumps the epoch, which fences every older producer of this id
        # and ends (aborts) its open transaction before this returns.
        await fresh.start()
    except BaseException:
        await _stop_quietly(fresh)
        raise
    producer._transaction_producers[tid] = fresh
    _broken.discard(tid)
    log.info("Started a new transactional producer for %s", tid)
    await fresh.begin_transaction()
    return fresh


async def _committed_already(batch: Batch) -> bool:
    """Whether an earlier attempt of ``batch`` committed, and only its answer was lost.

    Asked only on a retry, once the producer of the failed attempt was replaced: the new
    producer's initialisation ended that attempt's transaction one way or the other, so
    what is committed is final for it. With ``landed_by``, the changelog tells
    (:func:`_landed`; every batch of the tracker has one, since its offset can stay at
    an envelope whose events still wait in the merge, so two of its batches can commit
    the same offset). Otherwise the group's committed offsets do: an equal offset counts
    only with this batch's own metadata.
    """
    if batch.landed_by is not None:
        table, key, token = batch.landed_by
        assert batch.table_partition is not None, "landed_by needs a table partition"
        topic = table.changelog_topic.get_topic_name()
        return await _landed(topic, batch.table_partition, key, token)
    consumer: Any = app.consumer
    committed = await consumer.committed_offsets(batch.sources)
    for tp, offset in batch.sources.items():
        found = committed.get(tp)
        if found is None or found[0] < offset:
            return False
        if found[0] == offset and found[1] != batch.metadata.get(tp, ""):
            return False
    return True


LANDED_LOOK_BACK = 64
"""Records of a changelog partition read back first when looking for a key's last value
(each transaction of the partition writes the key once, plus a marker)."""


async def _landed(
    topic: str, partition: int, key: bytes, token: bytes, bootstrap: str | None = None
) -> bool:
    """Whether the last committed record of ``key`` in ``topic``/``partition`` holds
    ``token``. Read back from the end (read_committed) in growing steps until a record of
    ``key`` is found: one writer per changelog partition, so only its own attempts (and
    their markers) are between the end and the key's last record."""
    tp = TopicPartition(topic, partition)
    async with committed_readers(bootstrap or settings.broker_host_ports, [topic]) as (
        reader,
        probe,
    ):
        # Once no transaction is open (as a restore waits): the last one's markers may
        # still be on their way, and before them the last stable offset stops short.
        ends, stable = await stable_end_offsets(reader, probe, [tp], ATTEMPT_TIMEOUT_S / 2)
        if not stable:
            raise KafkaTimeoutError(f"{topic}/{partition} still has an open transaction")
        end = ends[tp]
        reader.assign([tp])
        back = LANDED_LOOK_BACK
        deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
        while True:
            start = max(0, end - back)
            reader.seek(tp, start)
            last: bytes | None = None
            while await reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"reading {topic}/{partition} back to {start}")
                got = await reader.getmany(tp, timeout_ms=1_000)
                for record in got.get(tp, ()):
                    if record.offset < end and record.key == key:
                        last = record.value
            if last is not None:
                return token in last
            if start == 0:
                return False
            back *= 8


async def _stop_quietly(txn: Any) -> None:
    """Close a failed producer at once, without flushing what it still holds.

    ``stop()`` would first wait for every queued record batch to be delivered, which
    with the broker gone never happens, and its sender would go on retrying (and be
    fenced later, an exception no one retrieves). Whatever it holds belongs to a
    transaction that is aborted anyway.
    """
    txn._closed = True
    try:
        if txn._sender is not None:
            await asyncio.wait_for(txn._sender.close(), 5.0)
        await asyncio.wait_for(txn.client.close(), 5.0)
    except Exception as exc:
        log.debug("Closing a failed producer: %r", exc)


@lru_cache(maxsize=65_536)
def _key_partition(key: bytes, partitions: int) -> int:
    """aiokafka's DefaultPartitioner for a key, memoised (SKU keys recur in every batch)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _written_upto(
    placed: list[tuple[str, int, int]], answers: Iterable[Any]
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> offset after the last record written there, from the
    record batches ``placed`` (topic, partition, records) and their RecordMetadata (the
    base offset; None with acks=0, when nothing is known)."""
    upto: dict[tuple[str, int], int] = {}
    for (topic, partition, count), meta in zip(placed, answers, strict=False):
        if meta is None or getattr(meta, "offset", None) is None or meta.offset < 0:
            continue
        end = meta.offset + count
        if end > upto.get((topic, partition), -1):
            upto[topic, partition] = end
    return upto


async def _send_batched(
    txn: Any,
    records: Iterable[tuple[str, bytes | None, bytes | None, int | None]],
    placed: list[tuple[str, int, int]] | None = None,
) -> list[Awaitable[Any]]:
    """Queue ``records`` on ``txn`` as one record batch per partition (or a few).

    ``send()`` per record costs a future, a metadata wait and an accumulator lookup
    each; a batch's records all go out before its commit anyway, so they are appended
    to aiokafka ``BatchBuilder`` objects directly. Order within a partition is kept;
    a partition of None picks it from the key, as ``send()`` would. Returns the
    batches' futures; ``placed`` gets (topic, partition, records) of each, in order.
    """
    sent: list[Awaitable[Any]] = []
    builders: dict[tuple[str, int], Any] = {}
    by_key = isinstance(txn._partitioner, DefaultPartitioner)
    partition_counts: dict[str, int] = {}
    for topic, key, value, partition in records:
        n = partition_counts.get(topic)
        if n is None:
            await txn.client._wait_on_metadata(topic)
            n = partition_counts[topic] = len(txn._metadata.partitions_for_topic(topic))
        if partition is None:
            if by_key and key is not None:
                partition = _key_partition(key, n)
            else:
                partition = txn._partition(topic, None, key, value, key, value)
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[topic, partition] = txn.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            if placed is not None:
                placed.append((topic, partition, builder.record_count()))
            sent.append(await txn.send_batch(builder, topic, partition=partition))
            builder = builders[topic, partition] = txn.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record for {topic} is larger than a whole batch")
    for (topic, partition), builder in builders.items():
        if placed is not None:
            placed.append((topic, partition, builder.record_count()))
        sent.append(await txn.send_batch(builder, topic, partition=partition))
    return sent


async def _commit_plain(batch: Batch) -> None:
    producer: Any = app.producer
    futures = [
        await producer.send(topic, key, value, partition, None, None)
        for topic, key, value, partition in batch.outputs
    ]
    changelog = [
        await producer.send(topic, key, value, partition, None, None)
        for topic, key, value, partition in _changelog_records(batch)
    ]
    for fut in futures:
        await fut
    written = [await fut for fut in changelog]
    batch.written_upto = _written_upto([(m.topic, m.partition, 1) for m in written], written)
    if batch.sources:
        # Faust commits only what its streams acknowledged, and the tapped topics
        # (app/engine/consumer.py) have no streams: their offsets are committed here.
        consumer: Any = app.consumer
        await consumer._commit(batch.sources)
