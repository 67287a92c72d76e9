"""Bringing a partition of the tables up to date from their changelogs, read_committed.

A worker does this for every partition it is given, as soon as it is given it, and
before it processes or serves it. Faust recovers tables too, but only the partitions its
assignor calls active and up to end offsets it reads once: right after a SIGKILL its
view can be wrong (we saw it read every changelog as empty while a dead worker's
transaction was still open, and start from nothing, and we saw it leave an older value
of a key in place). So the agents that keep state restore their own partitions here,
and wait first until no transaction is open on those changelogs, so what they read is
exactly what was committed.

Local state survives restarts: each store partition records the changelog position it
reflects (app/engine/checkpoint.py), written in the same RocksDB write batch as the data, by
every committed batch (app/engine/transaction.py), every fetch of a restore and every fetch of
a standby replica (app/engine/standby.py). A restore keeps a store whose position can be
trusted and replays only the changelog from there (after a clean stop usually nothing,
after a SIGKILL the batches committed after the last store write); any other store
partition is wiped and rebuilt from the changelog's start.

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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery

from app.engine.checkpoint import Position, position_key, resume_from
from app.engine.faults import retriable
from app.engine.stores import (
    LOCAL_PREFIX,
    get,
    items,
    local_range,
    mark_index_complete,
    owned_by,
    put_many,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Restored:
    """What one restore of a partition did."""

    records: int = 0
    """Changelog records applied (the tail only, where local state was reused)."""
    reused: list[str] = field(default_factory=list)
    """Tables whose local state was kept and replayed from its recorded position."""
    rebuilt: list[tuple[str, str]] = field(default_factory=list)
    """(table, why its local state was not used) of those rebuilt from the start."""

    def describe(self) -> str:
        """``reused local state of 6 of 6 tables`` or which were rebuilt and why."""
        total = len(self.reused) + len(self.rebuilt)
        parts = []
        if self.reused:
            parts.append(f"reused local state of {len(self.reused)} of {total} tables")
        by_reason: dict[str, list[str]] = {}
        for name, why in self.rebuilt:
            by_reason.setdefault(why, []).append(name)
        for why, names in sorted(by_reason.items()):
            parts.append(f"rebuilt {', '.join(sorted(names))}: {why}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ChangelogFacts:
    """What deciding whether to trust a recorded position needs from the cluster."""

    cluster: str
    delete_retention_s: dict[str, float | None]
    """Changelog topic -> its ``delete.retention.ms`` in seconds (None: unknown)."""


FACTS_TTL_S = 60.0
_facts: dict[tuple[str, str], tuple[float, float | None]] = {}
_clusters: dict[str, tuple[float, str]] = {}


def known_cluster_id(bootstrap: str) -> str | None:
    """The cluster id last learnt for ``bootstrap`` (None before the first restore):
    what a committed batch records with its changelog positions."""
    found = _clusters.get(bootstrap)
    return None if found is None else found[1]


async def changelog_facts(bootstrap: str, topics: Sequence[str]) -> ChangelogFacts:
    """The cluster id and the changelogs' ``delete.retention.ms``, asked at most once
    a minute (every restore and every standby assignment needs them)."""
    now = time.monotonic()
    cluster = _clusters.get(bootstrap)
    missing = [
        t for t in topics if now - _facts.get((bootstrap, t), (-1e18, None))[0] > FACTS_TTL_S
    ]
    if cluster is None or now - cluster[0] > FACTS_TTL_S or missing:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            cluster_id = str((await admin.describe_cluster()).get("cluster_id") or "")
            _clusters[bootstrap] = (now, cluster_id)
            if missing:
                resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in missing]
                answers = await admin.describe_configs(resources)
                found = _retentions(answers)
                for topic in missing:
                    _facts[bootstrap, topic] = (now, found.get(topic))
        finally:
            await admin.close()
    return ChangelogFacts(_clusters[bootstrap][1], {t: _facts[bootstrap, t][1] for t in topics})


def _retentions(answers: Iterable[Any]) -> dict[str, float]:
    """Topic -> delete.retention.ms in seconds, from DescribeConfigs responses."""
    found: dict[str, float] = {}
    for answer in answers:
        for error_code, _, _, name, entries, *_ in answer.resources:
            if error_code != 0:
                continue
            for entry in entries:
                if entry[0] == "delete.retention.ms" and entry[1] is not None:
                    found[name] = int(entry[1]) / 1000.0
    return found


def wipe_partition(table: Any, partition: int) -> None:
    """Delete the local state of ``partition`` of ``table`` and its recorded position,
    in one write batch: a crash in the rebuild that follows leaves a store that records
    the position its data reflects, never an old one."""
    writes: list[tuple[bytes, bytes | None]] = [(position_key(partition), None)]
    writes.extend((key, None) for key, _ in items(table, partition))
    # Local keys too (an index of records that are gone): the store starts empty, and
    # an empty store's index is complete.
    local_end = bytes([LOCAL_PREFIX[0] + 1])
    writes.extend((key, None) for key, _ in local_range(table, partition, LOCAL_PREFIX, local_end))
    put_many(table, writes, partition)
    mark_index_complete(table, partition)


def recorded_position(table: Any, partition: int) -> Position | None:
    return Position.decode(get(table, position_key(partition), partition))


def put_at(
    table: Any,
    partition: int,
    writes: list[tuple[bytes, bytes | None]],
    position: Position,
) -> None:
    """Write ``writes`` and the position they bring the store to, in one write batch."""
    put_many(table, [*writes, (position_key(partition), position.encode())], partition)


def start_offsets(
    by_tp: Mapping[TopicPartition, Any],
    beginning: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
    facts: ChangelogFacts,
    done: Restored,
) -> dict[TopicPartition, int]:
    """Where to read each changelog from: its recorded position when
    :func:`app.engine.checkpoint.resume_from` trusts it, else its start, after wiping the
    table's local partition (``tp.partition`` of the store of ``by_tp[tp]``). Notes
    each decision in ``done``."""
    now = time.time()
    start: dict[TopicPartition, int] = {}
    for tp, table in by_tp.items():
        partition = tp.partition
        offset, why = resume_from(
            recorded_position(table, partition),
            beginning=beginning[tp],
            end=end[tp],
            cluster=facts.cluster,
            topic=tp.topic,
            delete_retention_s=facts.delete_retention_s.get(tp.topic),
            now=now,
        )
        if offset is None:
            wipe_partition(table, partition)
            done.rebuilt.append((table.name, why))
            offset = beginning[tp]
        else:
            done.reused.append(table.name)
        start[tp] = offset
    return start


def apply_fetched(
    table: Any, partition: int, records: Sequence[Any], cluster: str, end: int | None = None
) -> int:
    """Apply one fetch of changelog records (those before ``end``) to the store with
    the position after them: one RocksDB write batch. Returns how many were applied."""
    if end is not None:
        records = [r for r in records if r.offset < end]
    if not records:
        return 0
    last = records[-1]
    # The last record's own time: every record after it (a tombstone the store has not
    # seen) was written later (app/engine/checkpoint.py, Position.as_of).
    position = Position(last.offset + 1, max(last.timestamp, 0) / 1000.0, cluster, last.topic)
    put_at(table, partition, [(r.key, r.value) for r in records], position)
    return len(records)


@asynccontextmanager
async def committed_readers(
    bootstrap: str, topics: Sequence[str]
) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaConsumer]]:
    """A read_committed reader and a read_uncommitted probe (for
    :func:`stable_end_offsets`), started, with the metadata of ``topics`` learnt in one
    request: end_offsets() would find the topics unknown one at a time and wait the
    retry backoff (100 ms) for each (about 1.2 s for the six tables, twice), and for a
    topic it knows nothing of it answered 0."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await asyncio.gather(reader.start(), probe.start())
    try:
        names = sorted(set(topics))
        await asyncio.gather(reader._client.set_topics(names), probe._client.set_topics(names))
        yield reader, probe
    finally:
        await asyncio.gather(reader.stop(), probe.stop())


async def restore_partition(
    tables: Sequence[Any], partition: int, bootstrap: str, *, stable_timeout_s: float = 90.0
) -> Restored:
    """Bring the local state of ``partition`` of each table up to its changelog's end.

    A table whose store partition records a position that can be trusted
    (:func:`app.engine.checkpoint.resume_from`) keeps its state and replays only the changelog
    from there; any other is wiped and rebuilt from the changelog's start.
    """
    by_tp = {TopicPartition(t.changelog_topic.get_topic_name(), partition): t for t in tables}
    tps = list(by_tp)
    names = sorted({tp.topic for tp in tps})
    async with committed_readers(bootstrap, names) as (reader, probe):
        facts = await changelog_facts(bootstrap, names)
        # Whatever reaches the changelogs after the end offsets read next (a tombstone
        # the store has not seen) is written after this.
        end_seen_at = time.time()
        end, stable = await stable_end_offsets(reader, probe, tps, stable_timeout_s)
        beginning = await reader.beginning_offsets(tps)
        done = Restored()
        start = start_offsets(by_tp, beginning, end, facts, done)
        reader.assign(tps)
        for tp, offset in start.items():
            reader.seek(tp, offset)
        pending = {tp for tp in tps if start[tp] < end[tp]}
        idle_polls = 0
        while pending and idle_polls < 5:
            fetched = await reader.getmany(*pending, timeout_ms=200)
            # A changelog can end in aborted records and markers, which a read_committed
            # fetch skips without moving the position: nothing more is coming.
            idle_polls = 0 if fetched else idle_polls + 1
            for tp, records in fetched.items():
                # One RocksDB write batch per fetch: a third of the cost of single puts.
                done.records += apply_fetched(
                    by_tp[tp], partition, records, facts.cluster, end[tp]
                )
            for tp in list(pending):
                if await reader.position(tp) >= end[tp]:
                    pending.discard(tp)
        if pending:
            # Idle polls also happen when the broker went away mid-restore: only trust
            # the end if the broker still answers (this raises when it does not, and
            # the restore is retried, from the positions recorded so far).
            await reader.end_offsets(list(pending))
        for tp, table in by_tp.items():
            # Everything before the end is in the store now. Only with no transaction
            # open at the end was everything after it written after end_seen_at;
            # otherwise keep the older time of the position recorded last.
            recorded = recorded_position(table, partition)
            as_of = end_seen_at if stable or recorded is None else recorded.as_of
            put_at(table, partition, [], Position(end[tp], as_of, facts.cluster, tp.topic))
        return done


async def stable_end_offsets(
    reader: AIOKafkaConsumer, probe: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> tuple[dict[TopicPartition, int], bool]:
    """The last stable offsets once they equal the high watermarks (no open transaction),
    and True; after ``timeout_s``, the last stable offsets as they are, and False.

    A worker killed mid-batch leaves its transaction open until its successor's producer
    fences it; reading before that would stop short of later committed data.
    """
    deadline = time.monotonic() + timeout_s
    next_log = time.monotonic() + 5
    while True:
        stable = await reader.end_offsets(tps)
        high = await probe.end_offsets(tps)
        if stable == high:
            return dict(stable), True
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
            return dict(stable), False
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
            done = await self._restore_retrying(partition, generation)
            if done is None:
                return False
            took_s = time.monotonic() - started
            if self._generation.get(partition, 0) != generation:
                log.info("Partition %d was revoked while it was restored", partition)
                return False
            setup = ""
            if self.on_restored is not None:
                set_up = time.monotonic()
                self.on_restored(partition)
                # Synchronous (it blocks the loop): shown apart from the restore.
                setup = f", then its in-memory state set up in {time.monotonic() - set_up:.2f} s"
            self._ready.add(partition)
            # bench/recovery.py and the tests parse this line.
            log.info(
                "Partition %d restored from %d changelog records in %.2f s (%s)%s",
                partition,
                done.records,
                took_s,
                done.describe(),
                setup,
            )
            return True

    async def _restore_retrying(self, partition: int, generation: int) -> Restored | None:
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

    def settle(self, assigned: Iterable[int]) -> set[int]:
        """A rebalance assigned ``assigned`` here: every partition restored or being
        restored now is void (forgotten, and returned), then the assigned ones are
        restored (:meth:`prefetch`).

        A revocation forgets what it revokes, so whatever is ready or under way at the
        next assignment was started in between: maybe of a partition that has just gone
        to another worker, and before this assignment's transactional producers fenced
        the partitions' former owners, so it may have missed their last commit.
        """
        void = set(self._ready)
        void.update(p for p, lock in self._locks.items() if lock.locked())
        if void:
            log.info(
                "Partition(s) %s of %s restored during the rebalance: restored again if assigned",
                ", ".join(map(str, sorted(void))),
                self._names(),
            )
        self.forget(void)
        self.prefetch(assigned)
        return void

    def forget(self, partitions: Iterable[int]) -> None:
        """The partitions were revoked (or their state is in doubt): restore them again."""
        for partition in partitions:
            self._ready.discard(partition)
            self._generation[partition] = self._generation.get(partition, 0) + 1

    def _names(self) -> str:
        return ", ".join(t.name for t in self.tables)


def _no_standbys(wanted: Mapping[TopicPartition, Any]) -> None:
    return None


_standby_sink: Callable[[Mapping[TopicPartition, Any]], None] = _no_standbys


def standbys_to(sink: Callable[[Mapping[TopicPartition, Any]], None]) -> None:
    """Every rebalance hands ``sink`` this worker's standby changelog partitions (each
    with its table): first none, then the new ones (app/engine/standby.py)."""
    global _standby_sink
    _standby_sink = sink


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

    async def on_rebalance(
        self,
        assigned: set[Any],
        revoked: set[Any],
        newly_assigned: set[Any],
        generation_id: int = 0,
    ) -> None:
        """Faust's bookkeeping, then the standby partitions go to app/engine/standby.py
        (:func:`standbys_to`) instead of Faust's standby recovery (which would read them
        with the main consumer); they stay paused there."""
        # Nothing tails while the assignment changes: a standby may become active here.
        _standby_sink({})
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if generation_id != self.app.consumer_generation_id:
            return  # a newer rebalance follows and assigns them
        actives = self.app.assignor.assigned_actives()
        changelogs = self.tables._changelogs
        wanted = {
            TopicPartition(tp.topic, tp.partition): changelogs[tp.topic]
            for tp in self.standby_tps
            if tp not in actives and tp.topic in changelogs
        }
        for standbys in (self.standby_tps, self.standby_offsets, self.standby_highwaters):
            standbys.clear()
        self.standbys_for_table.clear()
        _standby_sink(wanted)

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
    """Faust's table manager with :class:`OwnRestoreRecovery` (``TableManager`` setting),
    started without Faust's second of sleep."""

    async def on_start(self) -> None:
        # Faust's on_start, minus its first line: ``await self.sleep(1.0)``, a pause for
        # tables declared after the app starts. Every table here is declared when the app
        # is built (tables/), so that second was only a second more in every start and
        # restart before the group is joined.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = OwnRestoreRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
