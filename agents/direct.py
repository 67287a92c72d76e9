"""The direct join (``JOIN_READ=direct``, the default): one transaction from input to output.

Every worker reads every partition of ``orders`` and ``stock`` itself (outside the
consumer group: app/engine/input_reader.py), parses each message once, and puts the
events of the SKUs it owns straight into the tracker's event-time merge
(agents/tracker.py), which applies them in the contract's order. A batch's outputs, its
table changes and where its input is to be read again commit in one transaction of
the tracker partition, so an order's status is readable one commit after the order,
where the repartitioned join (agents/ingest.py) needs two. The price: each worker
parses the whole input, so parsing does not scale out with the workers.

Where the input is read again. Each commit of a tracker partition records, per input
partition, the offset
from which its input can be read again without missing an event, and the largest
``ts`` before it (``resume``: ``Merge.resume_points``, agents/processor.py): the oldest
event it still holds, else how far it had read. The reader reads each input partition
from the earliest such point among the partitions this worker owns, seeking back when
a partition joins (a restart, a takeover): an event a partition applied before is
skipped by its watermarks, one it holds by its merge. The merge keys are the same as on
the first reading, since the largest ``ts`` is carried from the resume point on.

A partition that gets no event still records its progress, at most every
``PROGRESS_EVERY_S``, so a restart does not read far back for it.

What the consumer group shows. The offsets committed to the group for the input
topics are not where anything resumes: tracker partition ``i mod N`` commits, with one
of its transactions at most every ``SHOW_EVERY_S``, how far this worker's reader has
read input partition ``i``, for lag monitors (``kafka-consumer-groups``) and the
injector's barriers, as ingest's committed offsets would show it in the other mode. The
other transactions commit no offsets at all: two requests fewer each. A commit retried
after a lost answer tells whether it landed from the token in the partition's document
(agents/tracker.py, ``finish``).

Dead letters. A rejected message of input partition ``i`` is dead-lettered by the
tracker partition ``i mod N`` (N: the SKU-keyed partitions), once: it goes through that
partition's merge like an event, and its watermark records it.

"Read to its end" is this reader's own, fresh knowledge: its position has reached the
last stable offset the broker reported at the last fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import TP

from agents.partition_runtime import PartitionRuntime, Waiting, restorer, runtimes, topic_names
from agents.rows import dead_letter, envelope_row, mts_metadata, unforeseen
from agents.tracker import DEAD, _commit, partition_lock, release_one
from app.domain.events import InvalidEvent
from app.domain.rules import merge as m
from app.engine import metrics, topics
from app.engine.batch_agents import listed_agent
from app.engine.consumer import assigned_partitions
from app.engine.faults import retriable
from app.engine.input_reader import InputReader, Read
from app.engine.instance import app, settings
from app.engine.transaction import Batch, owned

log = logging.getLogger(__name__)

READ_WAIT_S = 0.05
"""Longest a read waits for records when none are fetched yet."""
PROGRESS_EVERY_S = 1.0
"""How often a partition that applied nothing commits its progress anyway."""
SHOW_EVERY_S = 1.0
"""How often a partition shows the consumer group how far the reader got (lag monitors,
the injector's barriers). The commits in between carry no offsets: two requests fewer
(AddOffsetsToTxn, TxnOffsetCommit), one after the other, in each transaction."""
WAITING_MOST = 50_000
"""Most events waiting in this worker's merges before the reader waits for a commit."""
RETRY_MAX_S = 5.0


class DirectJoin:
    """The reader and what it knows of each input partition and tracker partition."""

    def __init__(self) -> None:
        names = topic_names()
        self.codes = {name: code for code, name in names.items()}
        self.reader = InputReader(settings.broker_host_ports, names.values(), settings.batch_size)
        self.adopted: dict[int, m.Merge[Waiting]] = {}
        """Tracker partition -> the merge the reader feeds (a rebuilt one is new)."""
        self.position: dict[TP, int] = {}
        """Input partition -> the next offset the reader hands on."""
        self.mts: dict[TP, float] = {}
        """Input partition -> the largest valid ``ts`` below ``position``."""
        self.saved_at: dict[int, float] = {}
        """Tracker partition -> time.monotonic() of its last commit."""
        self.saved_resume: dict[int, dict[m.Source, tuple[int, float]]] = {}
        """Tracker partition -> the resume points its last commit recorded."""
        self.saved_offsets: dict[int, dict[TP, int]] = {}
        """Tracker partition -> the input offsets its commits last showed the group."""
        self.shown_at: dict[int, float] = {}
        """Tracker partition -> time.monotonic() of the last commit that showed them."""
        self.restoring: dict[int, asyncio.Future[None]] = {}
        self.drivers: dict[int, asyncio.Future[None]] = {}
        """Tracker partition -> the task applying and committing its events."""
        self.dirty: set[int] = set()
        """Tracker partitions that got input since their driver last looked."""
        self.newest_ts: float | None = None
        """Kafka timestamp of the newest input record read (the latency metric)."""

    async def start(self) -> None:
        await self.reader.start(
            {name: topics.partitions_of(t) for name, t in self._input_topics().items()}
        )

    async def stop(self) -> None:
        await self.reader.stop()
        self.adopted.clear()
        self.position.clear()
        self.mts.clear()

    @staticmethod
    def _input_topics() -> dict[str, Any]:
        return {t.get_topic_name(): t for t in (topics.orders, topics.stock)}

    def restore_missing(self) -> None:
        """Restore the owned partitions without a runtime (one dropped after a commit
        that raced a rebalance, and given back since). Only outside a rebalance: an
        assignment is restored once Faust has started its transactional producers, whose
        initialisation fences the partition's former owner (app/engine/restore.py
        restores it then anyway)."""
        for tp in assigned_partitions([restorer.topic]):
            p = tp.partition
            if p not in runtimes and p not in self.restoring and owned(tp):
                self.restoring[p] = asyncio.ensure_future(self._restore(p))

    async def _restore(self, partition: int) -> None:
        try:
            await restorer.ensure(partition)
        except Exception:
            log.exception("Restore of partition %d failed; trying again", partition)
            await asyncio.sleep(1.0)
        finally:
            self.restoring.pop(partition, None)

    def adopt(self) -> dict[int, PartitionRuntime]:
        """Start feeding the runtimes built since the last read: seek the input back to
        the earliest of their resume points. Returns every runtime fed from now on."""
        for p in [p for p in self.adopted if p not in runtimes]:
            del self.adopted[p]
        names = topic_names()
        seeks: dict[TP, tuple[int, float]] = {}
        joined: list[int] = []
        now = time.monotonic()
        for p, rt in runtimes.items():
            if self.adopted.get(p) is rt.merge:
                continue
            self.adopted[p] = rt.merge
            joined.append(p)
            self.saved_at[p] = now
            self.saved_resume[p] = rt.merge.resume_points()
            self.saved_offsets.pop(p, None)
            for (code, partition), (offset, mts) in rt.merge.resume_points().items():
                tp = TP(names[code], partition)
                if tp not in seeks or offset < seeks[tp][0]:
                    seeks[tp] = (offset, mts)
        back = 0
        for tp, (offset, mts) in seeks.items():
            position = self.position.get(tp)
            if position is None or offset < position:
                self.reader.seek(tp, offset)
                self.position[tp], self.mts[tp] = offset, mts
                back += 1
        if joined:
            log.info(
                "Direct join: partition(s) %s joined; %d input partition(s) read again "
                "from their resume points",
                ", ".join(map(str, sorted(joined))),
                back,
            )
        return {p: rt for p, rt in runtimes.items() if self.adopted.get(p) is rt.merge}

    def live(self, fed: dict[int, PartitionRuntime]) -> dict[int, PartitionRuntime]:
        """Of the runtimes fed before the read, those still current (by their merge: an
        isolated event rebuilds a runtime around the same merge)."""
        found: dict[int, PartitionRuntime] = {}
        for p in fed:
            rt = runtimes.get(p)
            if rt is not None and rt.merge is self.adopted.get(p):
                found[p] = rt
        return found

    def feed(self, live: dict[int, PartitionRuntime], read: Read) -> None:
        """Route one read's events (and dead letters) into the merges that own them, and
        tell every merge how far each input partition was read."""
        now_wall, now = time.time(), time.monotonic()
        max_future_s = settings.max_future_seconds
        sku_partition = topics.sku_partition
        n_targets = topics.events_by_sku_partitions()
        for tp, records in read.records.items():
            code = self.codes[tp.topic]
            is_order = code == m.ORDERS
            source_partition = tp.partition
            mts = self.mts.get(tp, m.NEVER)
            letters_to = live.get(source_partition % n_targets)
            for record in records:
                offset = record.offset
                try:
                    sku, row = envelope_row(is_order, offset, record.value, now_wall, max_future_s)
                except Exception as exc:
                    if letters_to is not None:
                        reason = str(exc) if isinstance(exc, InvalidEvent) else None
                        letter = dead_letter(record, reason or unforeseen(record, exc))
                        item = Waiting([DEAD, offset, letter, code, source_partition], 0, now)
                        if not letters_to.merge.push((mts, code, source_partition, offset), item):
                            letters_to.counters["replayed"] += 1
                    continue
                ts = row[-1]
                if ts > mts:
                    mts = ts
                rt = live.get(sku_partition(sku))
                if rt is not None:
                    row.append(source_partition)
                    if not rt.merge.push(
                        (mts, code, source_partition, offset), Waiting(row, 0, now)
                    ):
                        rt.counters["replayed"] += 1
            self.mts[tp] = mts
        for tp, position in read.positions.items():
            self.position[tp] = position
            source = (self.codes[tp.topic], tp.partition)
            mts = self.mts.get(tp, m.NEVER)
            at_end = read.at_end.get(tp, False)
            for rt in live.values():
                rt.merge.report(source, mts, position, at_end)

    async def round(self) -> None:
        """Read once and hand each partition that got something to its driver."""
        self.restore_missing()
        fed = self.adopt()
        if not fed:
            await asyncio.sleep(READ_WAIT_S)
            return
        await self.drain()
        read = await self.reader.read(READ_WAIT_S)
        live = self.live(fed)
        self.feed(live, read)
        if read.records:
            self.newest_ts = metrics.count_input(read.records)
        for p in live:
            self.kick(p)

    async def drain(self) -> None:
        """Read on only while fewer than WAITING_MOST events wait in this worker's merges,
        or no commit is under way (events that wait for a lagging input partition are
        released only by reading on)."""
        while self.drivers and sum(len(rt.merge) for rt in runtimes.values()) > WAITING_MOST:
            await asyncio.wait(list(self.drivers.values()), return_when=asyncio.FIRST_COMPLETED)

    def kick(self, partition: int) -> None:
        """The partition got input: its driver applies and commits what is released."""
        self.dirty.add(partition)
        if partition not in self.drivers:
            self.drivers[partition] = asyncio.ensure_future(self.drive(partition))

    async def drive(self, partition: int) -> None:
        """Apply and commit the partition's released events, one batch at a time, until
        nothing new came in meanwhile; each partition has its own transactions, so one
        partition's commit never waits for another's."""
        try:
            await self._drive(partition)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # What the failed batch applied is unknown: stop the worker; a restart
            # resumes from the tables' last commit.
            await app.crash(exc)
            raise
        finally:
            self.drivers.pop(partition, None)

    async def _drive(self, partition: int) -> None:
        tp = TP(restorer.topic, partition)
        while partition in self.dirty:
            self.dirty.discard(partition)
            async with partition_lock(partition):
                rt = runtimes.get(partition)
                merge = self.adopted.get(partition)
                if rt is None or rt.merge is not merge:
                    return

                def current(merge: m.Merge[Waiting] | None = merge) -> bool:
                    now = runtimes.get(partition)
                    return now is not None and now.merge is merge and owned(tp)

                if not current():
                    return
                now = time.monotonic()
                progress = self.progress_due(partition, rt, now)
                rt, batch, more = release_one(tp, rt, progress)
                if batch is None:
                    continue
                resume = rt.merge.resume_points()  # as the batch records them
                shown = self.shown_offsets(partition) if self.show_due(partition, now) else {}
                self.decorate(tp, batch, shown)
                if not await _commit(tp, batch, current):
                    return
                self.saved_at[partition] = time.monotonic()
                self.saved_resume[partition] = resume
                if shown:
                    self.saved_offsets[partition] = shown
                    self.shown_at[partition] = now
            if more:
                self.dirty.add(partition)

    def decorate(self, tp: TP, batch: Batch, shown: dict[TP, int]) -> None:
        """Set the offsets a commit of the direct join carries: ``shown``, if any.

        Nothing is read from the SKU-keyed topic, so no offset of it is committed: a
        commit retried after a lost answer tells whether it landed from the partition's
        document (``Batch.landed_by``), and fencing is the partition's transactional
        id's, which its new owner initialises on assignment.
        """
        batch.sources.pop(tp, None)
        for input_tp, position in shown.items():
            # Not where the input is read again from (that is the resume points): how
            # far this worker has read, for lag monitors and the injector's barriers
            # (app/tools/inject.py), as ingest's offsets show it.
            batch.sources[input_tp] = position
            batch.metadata[input_tp] = mts_metadata(self.mts.get(input_tp, m.NEVER))
        batch.newest_input_ts = self.newest_ts

    def shown_offsets(self, partition: int) -> dict[TP, int]:
        """The reader's positions in the input partitions whose dead letters
        ``partition`` writes (``i mod N``): what its commits show the consumer group."""
        n = topics.events_by_sku_partitions()
        return {tp: pos for tp, pos in self.position.items() if tp.partition % n == partition}

    def show_due(self, partition: int, now: float) -> bool:
        """Whether the partition's next commit shows the group the reader's positions:
        they moved since it last did, at least SHOW_EVERY_S ago."""
        if not app.in_transaction:
            return False
        if now - self.shown_at.get(partition, -SHOW_EVERY_S) < SHOW_EVERY_S:
            return False
        return self.shown_offsets(partition) != self.saved_offsets.get(partition)

    def progress_due(self, partition: int, rt: PartitionRuntime, now: float) -> bool:
        """Whether the partition commits even if it applies nothing: the input offsets it
        shows are due (:meth:`show_due`), or its resume points moved and
        PROGRESS_EVERY_S passed."""
        if self.show_due(partition, now):
            return True
        if now - self.saved_at.get(partition, 0.0) < PROGRESS_EVERY_S:
            return False
        return rt.merge.resume_points() != self.saved_resume.get(partition)


async def run_direct_join() -> None:
    """The reader's task: read and apply until the worker stops; a reader that fails
    (the broker gone for longer than its client waits) is started again."""
    join = DirectJoin()
    delay = 0.5
    while True:
        try:
            await join.start()
            delay = 0.5
            while True:
                await join.round()
        except asyncio.CancelledError:
            for task in list(join.drivers.values()):
                task.cancel()
            raise
        except Exception as exc:
            if not retriable(exc):
                await app.crash(exc)
                raise
            log.warning("Direct join: reading the input failed, starting again: %r", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        finally:
            await join.stop()


if settings.join_read == "direct":
    app.task(run_direct_join)
    listed_agent(
        topics.orders,
        topics.stock,
        name="direct",
        help="orders + stock, every partition -> the tracker's merge (events of the SKUs "
        "this worker owns) or dead-letters",
    )
