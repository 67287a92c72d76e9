"""Rebuilding a partition of the tables from their changelogs, read_committed.

A worker does this for every partition it is given, as soon as it is given it, and
before it processes or serves it. Faust recovers tables too, but only the partitions its
assignor calls active and up to end offsets it reads once: right after a SIGKILL its
view can be wrong (we saw it read every changelog as empty while a dead worker's
transaction was still open, and start from nothing, and we saw it leave an older value
of a key in place). So the agents that keep state restore their own partitions here,
and wait first until no transaction is open on those changelogs, so what they read is
exactly what was committed.

:class:`Restorer` does it once per assignment of a partition: eagerly when the
partition is assigned (so a partition that gets no new input is still served right
after a restart or a takeover), or on demand when an agent needs it first. A restore
that fails because the cluster does not answer is retried with backoff for as long as
the partition stays assigned. The restorer also says which partitions unkeyed table
reads cover (:func:`app.engine.stores.owned_by`): those assigned here and restored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery

from app.engine.faults import retriable
from app.engine.stores import items, owned_by, put_many

log = logging.getLogger(__name__)


async def restore_partition(
    tables: Sequence[Any], partition: int, bootstrap: str, *, stable_timeout_s: float = 90.0
) -> int:
    """Replace the local state of ``partition`` of each table with its changelog's.

    Returns the number of changelog records applied.
    """
    by_tp = {TopicPartition(t.changelog_topic.get_topic_name(), partition): t for t in tables}
    tps = list(by_tp)
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await asyncio.gather(reader.start(), probe.start())
    try:
        # Learn every changelog's metadata in one request: end_offsets() would find the
        # topics unknown one at a time and wait the retry backoff (100 ms) for each,
        # about 1.2 s for the six tables, twice.
        names = sorted({tp.topic for tp in tps})
        await asyncio.gather(reader._client.set_topics(names), probe._client.set_topics(names))
        end = await _stable_end_offsets(reader, probe, tps, stable_timeout_s)
        for table in tables:
            put_many(table, [(key, None) for key, _ in items(table, partition)], partition)
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        pending = {tp for tp in tps if end[tp] > 0}
        applied = 0
        idle_polls = 0
        while pending and idle_polls < 5:
            fetched = await reader.getmany(*pending, timeout_ms=200)
            # A changelog can end in aborted records and markers, which a read_committed
            # fetch skips without moving the position: nothing more is coming.
            idle_polls = 0 if fetched else idle_polls + 1
            for tp, records in fetched.items():
                # One RocksDB write batch per fetch: a third of the cost of single puts.
                writes = [(r.key, r.value) for r in records if r.offset < end[tp]]
                put_many(by_tp[tp], writes, partition)
                applied += len(writes)
            for tp in list(pending):
                if await reader.position(tp) >= end[tp]:
                    pending.discard(tp)
        if pending:
            # Idle polls also happen when the broker went away mid-restore: only trust
            # the end if the broker still answers (this raises when it does not, and
            # the restore is retried from scratch).
            await reader.end_offsets(list(pending))
        return applied
    finally:
        await asyncio.gather(reader.stop(), probe.stop())


async def _stable_end_offsets(
    reader: AIOKafkaConsumer, probe: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The last stable offsets once they equal the high watermarks (no open transaction).

    A worker killed mid-batch leaves its transaction open until its successor's producer
    fences it; reading before that would stop short of later committed data.
    """
    deadline = time.monotonic() + timeout_s
    next_log = time.monotonic() + 5
    while True:
        stable = await reader.end_offsets(tps)
        high = await probe.end_offsets(tps)
        if stable == high:
            return dict(stable)
        if time.monotonic() > next_log:
            next_log += 5
            waiting = {
                f"{tp.topic}/{tp.partition}": (stable[tp], high[tp])
                for tp in tps
                if stable[tp] != high[tp]
            }
            log.info("Waiting for open transactions to end before restoring: %s", waiting)
        if time.monotonic() > deadline:
            log.warning("Changelogs still have open transactions; restoring what is stable")
            return dict(stable)
        await asyncio.sleep(0.2)


RESTORERS: list[Restorer] = []
"""Every restorer of the app (for readiness: ``/health``, HTTP reads)."""


def unrestored(assigned: Iterable[Any]) -> list[tuple[str, int]]:
    """The (topic, partition)s of ``assigned`` TPs whose tables are not restored yet."""
    by_topic = {r.topic: r for r in RESTORERS}
    return sorted(
        (tp.topic, tp.partition)
        for tp in assigned
        if tp.topic in by_topic and not by_topic[tp.topic].is_ready(tp.partition)
    )


class Restorer:
    """Restores partitions of some tables once per assignment, eagerly or on demand.

    ``on_restored(partition)`` runs right after a restore, before the partition counts
    as ready (an agent rebuilds its in-memory state there). A partition revoked while
    it is being restored does not become ready: its next use restores it again.
    """

    def __init__(
        self,
        topic: str,
        tables: Sequence[Any],
        bootstrap: str,
        on_restored: Callable[[int], None] | None = None,
    ) -> None:
        self.topic = topic
        """The input topic whose partitions these table partitions belong to."""
        self.tables = tables
        self.bootstrap = bootstrap
        self.on_restored = on_restored
        self._ready: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        self._generation: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        RESTORERS.append(self)
        for table in tables:
            owned_by(table, self.ready_partitions)

    def ready_partitions(self) -> set[int]:
        """The partitions assigned here and restored (what unkeyed reads cover)."""
        return set(self._ready)

    def is_ready(self, partition: int) -> bool:
        return partition in self._ready

    async def ensure(self, partition: int) -> bool:
        """Restore ``partition`` unless it is ready; whether it is ready afterwards."""
        if partition in self._ready:
            return True
        generation = self._generation.get(partition, 0)
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            if partition in self._ready:
                return True
            if self._generation.get(partition, 0) != generation:
                return False
            log.info("Restoring partition %d of %s", partition, self._names())
            started = time.monotonic()
            n = await self._restore_retrying(partition, generation)
            if n is None:
                return False
            took_s = time.monotonic() - started
            if self._generation.get(partition, 0) != generation:
                log.info("Partition %d was revoked while it was restored", partition)
                return False
            if self.on_restored is not None:
                self.on_restored(partition)
            self._ready.add(partition)
            log.info(
                "Partition %d restored from %d changelog records in %.2f s",
                partition,
                n,
                took_s,
            )
            return True

    async def _restore_retrying(self, partition: int, generation: int) -> int | None:
        """:func:`restore_partition`, retried with backoff through broker outages for as
        long as the partition stays assigned; None once it was revoked meanwhile."""
        delay, attempts, last_log = 0.5, 0, 0.0
        while True:
            try:
                return await restore_partition(self.tables, partition, self.bootstrap)
            except Exception as exc:
                if not retriable(exc):
                    raise
                attempts += 1
                if time.monotonic() - last_log >= 30:
                    last_log = time.monotonic()
                    log.warning(
                        "Restoring partition %d failed (%d attempts), retrying: %r",
                        partition,
                        attempts,
                        exc,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if self._generation.get(partition, 0) != generation:
                return None

    def prefetch(self, partitions: Iterable[int]) -> None:
        """Start restoring ``partitions`` in the background (on assignment)."""
        for partition in partitions:
            task = asyncio.ensure_future(self._prefetch(partition))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, partition: int) -> None:
        try:
            await self.ensure(partition)
        except Exception:
            # The agent's own call to ensure() retries and fails loudly if it must.
            log.exception("Background restore of partition %d failed", partition)

    def forget(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked (or their state is in doubt): restore them again."""
        for partition in partitions:
            self._ready.discard(partition)
            self._generation[partition] = self._generation.get(partition, 0) + 1

    def _names(self) -> str:
        return ", ".join(t.name for t in self.tables)


class OwnRestoreRecovery(Recovery):
    """Faust's table recovery, minus reading the changelogs into the stores, and with
    the stream partitions sought before they resume.

    Every partition is restored by :class:`Restorer` anyway, correctly (read_committed,
    after open transactions end), so Faust's pass would only cost time: after a SIGKILL
    it waits about ten seconds for records of the dead worker's aborted transaction.
    Everything else (pausing and resuming partitions, seeking to committed offsets,
    the rebalance signals) stays Faust's. Faust's recovery reading a changelog as empty
    is shown by tests/engine/test_upstream_recovery_open_transaction.py.
    """

    def need_recovery(self) -> bool:
        return False

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # Seek the stream partitions to their committed offsets *before* they resume
        # fetching, not after (app/engine/consumer.py explains what the other order loses).
        consumer: Any = self.app.consumer
        with consumer.resumes_after_seek():
            await super().on_recovery_completed(generation_id)

    async def _resume_streams(self, generation_id: int = 0) -> None:
        consumer: Any = self.app.consumer
        with consumer.resumes_after_seek():
            await super()._resume_streams(generation_id)


class OwnRestoreTableManager(TableManager):
    """Faust's table manager with :class:`OwnRestoreRecovery` (``TableManager`` setting)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = OwnRestoreRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
