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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.structs import TopicPartition
from faust.exceptions import ConsumerNotStarted
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerDriver
from faust.types import TP

from app import metrics
from app.main import app
from tables.base import LOCAL_PREFIX, put_many

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
        key (``tables.base.LOCAL_PREFIX``) goes to the store only, never to the changelog.
        """
        size = len(key) + (0 if value is None else len(value))
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"table {getattr(table, 'name', table)}", size)
        self.table_writes[(table, key)] = value


class BatchTransactionManager(TransactionManager):
    """Faust's transaction manager, minus its own offset commits.

    Every batch commits its offsets in its own transaction (:func:`commit`). Faust
    would also commit the offsets of *acknowledged* messages (on rebalance, on stop),
    and those lag a batch behind, so its commit could move a committed offset back
    and make the next worker redo work. Producers per partition, fencing and
    rebalancing stay Faust's.
    """

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        return False


class BatchProducer(AIOKafkaProducerDriver):
    """Faust's aiokafka producer, retrying transactional requests after 20 ms, not 100.

    A transaction that starts right after the previous one of its producer committed
    often finds the coordinator still writing the commit markers and is told
    CONCURRENT_TRANSACTIONS; aiokafka then waits its retry backoff. With the default
    100 ms, a third of the ingest transactions waited that long (the Java client uses
    20 ms for the same reason).
    """

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "retry_backoff_ms": 20}


def transactional_id(tp: TP) -> str:
    """The id Faust gives the producer that owns ``tp`` (see faust TransactionManager)."""
    group = app.assignor.group_for_topic(tp.topic)
    return f"{app.conf.id}-{group}-{tp.partition}"


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
    if source not in assigned or not consumer.flow_active:
        return False
    if app.in_transaction:
        producer: Any = app.producer
        return transactional_id(source) in producer._transaction_producers
    return True


async def commit(batch: Batch, *, source: TP) -> None:
    """Write ``batch`` atomically with its input offsets, or crash the worker.

    ``source`` picks the transactional producer; every TP in ``batch.sources`` must
    share its transactional id (same partition number and topic group).
    """
    if not batch.sources and not batch.outputs and not batch.table_writes:
        return
    try:
        if app.in_transaction:
            await _commit_transactional(batch, source)
        else:
            await _commit_plain(batch)
    except Exception as exc:
        # The local store may already hold this batch while Kafka does not: only a
        # restart (which rebuilds tables from their changelogs) makes them agree again.
        app.log.exception("Batch commit failed, stopping the worker: %r", exc)
        await app.crash(exc)
        raise
    metrics.committed(batch.outputs, batch.sources, batch.newest_input_ts)


def _apply_to_stores(batch: Batch) -> Iterable[tuple[str, bytes, bytes | None, int | None]]:
    """Write the staged table changes to the local stores; yield their changelog records."""
    partition = batch.table_partition
    by_table: dict[Any, list[tuple[bytes, bytes | None]]] = {}
    for (table, key), value in batch.table_writes.items():
        writes = by_table.get(table)
        if writes is None:
            writes = by_table[table] = []
        writes.append((key, value))
    for table, writes in by_table.items():
        assert partition is not None, "a batch that writes tables needs table_partition"
        put_many(table, writes, partition)
        topic = table.changelog_topic.get_topic_name()
        for key, value in writes:
            if not key.startswith(LOCAL_PREFIX):
                yield topic, key, value, partition


async def _commit_transactional(batch: Batch, source: TP) -> None:
    tid = transactional_id(source)
    # Faust's aiokafka driver keeps one transactional producer (and lock) per id.
    producer: Any = app.producer
    lock = producer._trn_locks[tid]
    async with lock:
        txn = producer._transaction_producers[tid]
        try:
            sent = await _send_batched(txn, chain(batch.outputs, _apply_to_stores(batch)))
            if batch.sources:
                offsets = {
                    TopicPartition(tp.topic, tp.partition): (o, batch.metadata.get(tp, ""))
                    for tp, o in batch.sources.items()
                }
                sent.append(txn.send_offsets_to_transaction(offsets, app.conf.id))
            # aiokafka would commit a transaction even if one of its record batches
            # failed; every one must have been written first.
            await asyncio.gather(*sent)
            await txn.commit_transaction()
        except BaseException:
            # The open transaction may hold part of this batch (also when the task was
            # cancelled, e.g. the consumer's fetcher on shutdown), and the next commit on
            # this producer would commit it too. Nothing may use it again: Kafka aborts
            # the transaction when the next owner of the id fences it.
            if producer._transaction_producers.get(tid) is txn:
                del producer._transaction_producers[tid]
            raise
        await txn.begin_transaction()


@lru_cache(maxsize=65_536)
def _key_partition(key: bytes, partitions: int) -> int:
    """aiokafka's DefaultPartitioner for a key, memoised (SKU keys recur in every batch)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


async def _send_batched(
    txn: Any, records: Iterable[tuple[str, bytes | None, bytes | None, int | None]]
) -> list[Awaitable[Any]]:
    """Queue ``records`` on ``txn`` as one record batch per partition (or a few).

    ``send()`` per record costs a future, a metadata wait and an accumulator lookup
    each; a batch's records all go out before its commit anyway, so they are appended
    to aiokafka ``BatchBuilder`` objects directly. Order within a partition is kept;
    a partition of None picks it from the key, as ``send()`` would. Returns the
    batches' futures.
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
            sent.append(await txn.send_batch(builder, topic, partition=partition))
            builder = builders[topic, partition] = txn.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record for {topic} is larger than a whole batch")
    for (topic, partition), builder in builders.items():
        sent.append(await txn.send_batch(builder, topic, partition=partition))
    return sent


async def _commit_plain(batch: Batch) -> None:
    producer: Any = app.producer
    futures = [
        await producer.send(topic, key, value, partition, None, None)
        for topic, key, value, partition in batch.outputs
    ]
    futures += [
        await producer.send(topic, key, value, partition, None, None)
        for topic, key, value, partition in _apply_to_stores(batch)
    ]
    for fut in futures:
        await fut
    if batch.sources:
        # Faust commits only what its streams acknowledged, and the tapped topics
        # (app/consumer.py) have no streams: their offsets are committed here.
        consumer: Any = app.consumer
        await consumer._commit(batch.sources)
