"""Faust's aiokafka consumer, minus two ways to lose messages, plus a batch tap.

Faust's ``Consumer.getmany`` fetches a batch of records, then hands them to the streams
one by one, and ``Consumer._drain_messages`` drops any record whose offset is below the
partition's in-memory *read offset* (the last offset it handed on, or where a seek put
it). Two things went wrong with that:

1. Records of a partition that is not active at that moment (paused for table recovery
   or a rebalance) are skipped, yet the fetch position stays *after* them. Unless
   something seeks back, they are never read again, and the next batch of that
   partition commits an offset past them. The crash test saw a restarted worker lose
   about twenty orders per partition.
2. A seek while a batch is being handed on (Faust's recovery resumes the stream
   partitions, then seeks them to their committed offsets, while the drain loop is
   still delivering what it fetched) leaves the rest of that batch stale: Faust goes on
   delivering it, moving the read offset *ahead* of the new position, and then drops
   the re-fetched records below it as "already read". A crash soak lost whole envelopes
   of the SKU-keyed topic and runs of orders this way (Faust: ``DROPPED MESSAGE ROFF``).

Here a partition whose records were held back because it was paused is sought back to
the first of them once the batch is handed on, and a partition sought while its batch
is being handed on gets none of the rest of that batch (its new position re-reads
them), so the read offset never runs ahead of the position. For that every seek marks
its partitions the moment the position moves, which for ``seek_to_committed`` means
reading all committed offsets first and then moving every position in one call. A
stopped flow or a new generation is left to Faust, which then seeks every partition to
its committed offset. Everything else is Faust's code unchanged.

**Leaving the group.** With static membership (WORKER_INSTANCE_ID) aiokafka sends no
LeaveGroup when the consumer closes; :func:`leave_group_when_closed` sends one naming
the instance id, so a stopped worker's partitions move at once. Only ``kill -9`` keeps a
static member's place in the group (for FAILURE_DETECTION_SECONDS).

**The batch tap.** Faust turns every record into a ``Message``, routes it through the
conductor into a stream queue, wakes the agent, and tracks its ack; we measured that
machinery alone capping a worker near 3.8k messages/s, and the app needs none of it for
its own batch agents: they commit their input offsets in their own transactions
(app/engine/transaction.py), so Faust's ack and gap tracking only costs time (its gap tree
for a transactional topic is never trimmed, since Faust never commits, and grew with
every batch). So the records of a *tapped* topic (see :func:`tap`) are not turned into
messages: the handler registered for the topic gets, once per fetch, every record of
it grouped per partition as lists of raw aiokafka ``ConsumerRecord`` in offset order.
The same rules hold for them as for messages: nothing of a partition that is not
active, nothing after a held-back record, nothing once the flow stopped or the
generation changed (the handler can ask with the ``current`` callable it is given, after
any await), and the next fetch waits until the handler returned, so batches of one
partition never overlap (a handler that passes records on to a task of its own, as the
tracker does, keeps them in order there). Everything else is Faust's code unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

log = logging.getLogger(__name__)

Records = Mapping[TP, Sequence[Any]]
"""Input partition -> its fetched aiokafka ``ConsumerRecord`` objects, in offset order."""
BatchHandler = Callable[[Records, Callable[[], bool]], Awaitable[None]]
"""``handler(records, current)``; ``current()`` is False once the records went stale."""

_taps: dict[str, BatchHandler] = {}
_every_fetch: set[BatchHandler] = set()
_consumer: GaplessConsumer | None = None
"""The worker's consumer, once built (for the module functions below)."""


def tap(topic: str, handler: BatchHandler, *, every_fetch: bool = False) -> None:
    """Deliver the records of ``topic`` to ``handler`` in batches instead of streams.

    The topic must still be subscribed (``app.engine.topics.add``); no stream sees its records.
    With ``every_fetch`` the handler is also called for a fetch that brought none of its
    records (with an empty mapping), e.g. to notice that a partition reached its end.
    """
    _taps[topic] = handler
    if every_fetch:
        _every_fetch.add(handler)


def committed_metadata(tp: TP) -> str | None:
    """The metadata committed with ``tp``'s offset, as read at the last seek to the
    committed offsets (None: nothing committed, or no consumer)."""
    return None if _consumer is None else _consumer.committed_metadata.get(tp)


def rebalancing() -> bool:
    """Whether the group is between a revocation and the end of the next assignment.

    Meanwhile ``assignment()`` still lists the old partitions, which may be another
    worker's already, and neither ``flow_active`` nor Faust's ``app.rebalancing`` says
    so reliably: a recovery of the previous assignment that finishes late resumes the
    flow and ends Faust's rebalance after the next one began (seen in a CI log: a
    worker restored and counted two partitions that had just gone to another worker).
    """
    return _consumer is not None and _consumer.rebalancing


def assigned_partitions(topics: Iterable[str]) -> list[TP]:
    """This worker's partitions of ``topics`` (none without a consumer)."""
    if _consumer is None:
        return []
    wanted = set(topics)
    return [tp for tp in _consumer.assignment() if tp.topic in wanted]


async def end_offsets(tps: Iterable[TP]) -> dict[TP, int]:
    """The end offsets of ``tps`` on the broker now: the last stable offsets, as this
    consumer reads committed records (empty without a consumer)."""
    if _consumer is None:
        return {}
    return await _consumer.end_offsets_now(tps)


def read_to_end(tps: Iterable[TP]) -> dict[TP, bool]:
    """Per partition: has the consumer handed on everything the broker held at the last
    fetch? (Its position has reached the last stable offset: read_committed.)

    Read from aiokafka's subscription state, which only the consumer's thread writes;
    called between two fetches (from a tap handler), so the position is that of the
    records already handed on. Unknown (no fetch answered yet, a paused partition): False.
    """
    return {tp: at is not None for tp, at in read_to_end_at(tps).items()}


def read_to_end_at(tps: Iterable[TP]) -> dict[TP, int | None]:
    """As :func:`read_to_end`, with where: per partition, the consumer's position (every
    offset below it handed on, control records included) if it has reached the end the
    broker held at the last fetch, else None."""
    if _consumer is None:
        return dict.fromkeys(tps, None)
    return _consumer.read_to_end_at(tps)


@dataclass(slots=True)
class Fetch:
    """One fetch of a tapped topic, handed on by a handler to a task of its own."""

    records: Records
    current: Callable[[], bool]
    """False once the records went stale (see :data:`BatchHandler`)."""
    ends: Mapping[TP, bool] = field(default_factory=dict)
    """:func:`read_to_end` as read when the fetch was handed on (ingest's reports)."""
    generation: int = 0
    positions: Mapping[TP, int] = field(default_factory=dict)
    """For the partitions read to their end then: where (:func:`read_to_end_at`)."""

    def size(self) -> int:
        return sum(len(batch) for batch in self.records.values())


class FetchQueue:
    """Fetches waiting for the task that applies and commits them (ingest, the tracker).

    A handler that commits in the consumer's fetch loop holds back every other tapped
    topic for as long as its commit takes; queueing the fetch lets the loop go on (the
    tracker gets the envelopes of the previous ingest commit while the next one is in
    flight). ``put`` waits while ``maxsize`` fetches wait (the fetch loop slows down to
    the task's pace). ``take`` returns the oldest fetch merged with those queued behind it
    (see :func:`merged`), up to ``most_records`` records: the task commits whatever
    accumulated during its last commit in one transaction per producer, so under load it
    commits fewer, larger batches instead of falling further behind.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Fetch] = deque()
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, fetch: Fetch) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._items) < self.maxsize)
            self._items.append(fetch)
            self._changed.notify_all()

    async def take(self, most_records: int) -> Fetch:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            taken = [self._items.popleft()]
            n = taken[0].size()
            while self._items and n + self._items[0].size() <= most_records:
                n += self._items[0].size()
                taken.append(self._items.popleft())
            self._changed.notify_all()
        return merged(taken)


def merged(fetches: Sequence[Fetch]) -> Fetch:
    """Consecutive fetches as one: each partition's records in offset order, the latest
    ``ends`` (and ``positions``), ``current`` and generation.

    Stale fetches (``current()`` False: a rebalance or a stop since; the consumer seeks
    back to the committed offsets and fetches their records again) are dropped. Staleness
    only grows with age (a generation never comes back), so they are the oldest ones; if
    all are stale, the newest is returned, for its caller to see so. A record at or below
    an offset already taken for its partition is left out (a re-fetch after a seek back).
    """
    live = [f for f in fetches if f.current()]
    if len(live) <= 1:
        return live[0] if live else fetches[-1]
    records: dict[TP, list[Any]] = {}
    ends: dict[TP, bool] = {}
    positions: dict[TP, int] = {}
    for fetch in live:
        for tp, batch in fetch.records.items():
            got = records.get(tp)
            if got is None:
                records[tp] = list(batch)
            else:
                last = got[-1].offset if got else -1
                got.extend(r for r in batch if r.offset > last)
        ends.update(fetch.ends)
        positions.update(fetch.positions)
    last_fetch = live[-1]
    # A partition's position counts only while its latest ``ends`` says "read to its end".
    positions = {tp: at for tp, at in positions.items() if ends.get(tp)}
    return Fetch(records, last_fetch.current, ends, last_fetch.generation, positions)


FETCH_MAX_WAIT_MS = 20
"""Longest the broker holds a fetch that found nothing to return (Faust hard-codes 1,500).

Under read_committed a fetch can return a transaction's records only after its commit
marker; a fetch that found none waits up to this long before the consumer asks again,
and an order crosses two transactional hops (input -> ingest -> tracker). A short wait
bounds what each hop can add; an idle worker pays a small fetch request per broker
every 20 ms for it.
"""

GROUP_FETCH_MAX_WAIT_MS = 500
"""The same wait with the direct join (``JOIN_READ=direct``): the group's consumer then
reads nothing an order waits for (the empty SKU-keyed topic, the dead letters for
their counts), and its thread only competes with the join's for the interpreter."""


class _LeaveGroupResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class StaticLeaveGroupRequest(Request[_LeaveGroupRequest_v3]):  # type: ignore[misc]
    """LeaveGroup naming a static member by its ``group.instance.id`` (KIP-345, v3+),
    which aiokafka does not implement: its LeaveGroup (v0-v1) cannot remove one."""

    API_KEY = 13

    def __init__(self, group: str, member_id: str, instance_id: str) -> None:
        self._group, self._member_id, self._instance_id = group, member_id, instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequest_v3]) -> _LeaveGroupRequest_v3:
        return request_struct_class(self._group, [(self._member_id, self._instance_id)])


def leave_group_when_closed(coordinator: Any) -> None:
    """Make a static member leave the group when its consumer closes (SIGTERM, a crash
    of the worker's own code), as a dynamic one does.

    aiokafka, as Kafka's Java client, sends no LeaveGroup for a static member (one with
    WORKER_INSTANCE_ID), expecting it back within the session timeout: its partitions
    then wait FAILURE_DETECTION_SECONDS for it, processed by nobody. A worker that stops
    may not come back, so it leaves, and the others take its partitions over at once.
    Only a worker that dies without closing (``kill -9``, a lost machine) keeps its place;
    restarted with the same id, it gets its partitions back without a rebalance.
    """
    instance_id = coordinator._group_instance_id

    async def leave() -> None:
        if coordinator.generation > 0 and instance_id is not None:
            request = StaticLeaveGroupRequest(
                coordinator.group_id, coordinator.member_id, instance_id
            )
            try:
                response = await coordinator._send_req(request)
            except KafkaError as exc:
                log.warning("Leaving the group failed (%r): the group waits for us", exc)
            else:
                codes = [response.error_code] + [m[2] for m in response.members]
                errors = [for_code(code).__name__ for code in codes if code]
                if errors:
                    log.warning("Leaving the group failed: %s", ", ".join(errors))
                else:
                    log.info("Left the group (static member %s)", instance_id)
        coordinator.reset_generation()

    coordinator._maybe_leave_group = leave


class FastFetchConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, with a short fetch wait (see FETCH_MAX_WAIT_MS; with the
    direct join GROUP_FETCH_MAX_WAIT_MS), whose
    consumer leaves the group when it stops, also with static membership."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = getattr(self.app, "settings", None)
        direct = settings is not None and settings.join_read == "direct"
        consumer._fetch_max_wait_ms = GROUP_FETCH_MAX_WAIT_MS if direct else FETCH_MAX_WAIT_MS
        return consumer

    async def on_thread_stop(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and coordinator._group_instance_id is not None:
            leave_group_when_closed(coordinator)
        await super().on_thread_stop()


class GaplessConsumer(AIOKafkaConsumer):
    """A consumer whose fetch position never passes a record it did not deliver.

    tests/engine/test_upstream_paused_partition.py and test_upstream_stale_batch.py show
    both losses on Faust's own consumer; when they fail, Faust fixed them.
    """

    def _new_consumer_thread(self) -> Any:
        return FastFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks: dict[TP, int] = {}
        """Partition -> how often its position was moved by a seek."""
        self._targets: dict[TP, int | None] = {}
        """Partition -> where its last seek put it (None: nothing committed)."""
        self._holding = False
        self._held_resumes: set[TP] = set()
        self.committed_metadata: dict[TP, str] = {}
        """Partition -> the metadata of its committed offset, read at the last seek."""
        self.rebalancing = False
        """From a rebalance's revocation until its new assignment was handled (its
        transactional producers started, its signal sent); see :func:`rebalancing`."""
        global _consumer
        _consumer = self

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.rebalancing = True
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.rebalancing = True
        try:
            await super().on_partitions_assigned(assigned, generation_id)
        finally:
            self.rebalancing = False

    def read_to_end_at(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        thread: Any = self._thread
        consumer = thread._ensure_consumer()
        assignment = consumer._subscription.subscription
        states = None if assignment is None else assignment.assignment
        ends: dict[TP, int | None] = {}
        for tp in tps:
            at_end: int | None = None
            try:
                state = None if states is None else states.state_value(tp)
            except (KeyError, AssertionError):  # pragma: no cover - unassigned meanwhile
                state = None
            if state is not None and state.has_valid_position and not state.paused:
                end = state.lso if self.in_transaction else state.highwater
                if end is not None and end >= 0 and state.position >= end:
                    at_end = state.position
            ends[tp] = at_end
        return ends

    async def end_offsets_now(self, tps: Iterable[TP]) -> dict[TP, int]:
        """One ListOffsets request for ``tps``, with the consumer's isolation level (Faust's
        ``highwaters`` returns what the last fetch said instead, under transactions)."""
        thread: Any = self._thread
        consumer = thread._ensure_consumer()
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]

        async def ask() -> dict[Any, int]:
            found: dict[Any, int] = await consumer.end_offsets(wanted)
            return found

        found: dict[Any, int] = await thread.call_thread(ask)
        return {TP(tp.topic, tp.partition): offset for tp, offset in found.items()}

    @contextmanager
    def resumes_after_seek(self) -> Iterator[None]:
        """Within: ``resume_partitions`` waits for the next ``perform_seek`` to finish.

        Faust's recovery resumes the stream partitions and *then* seeks them to their
        committed offsets; records fetched in between would be stale the moment the seek
        lands (see the module docstring). Recovery runs its completion inside this, so
        the partitions start fetching only from the positions the seek sets.
        """
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self._release_resumes()

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        if self._holding:
            self._held_resumes.update(tps)
            return
        super().resume_partitions(tps)

    def _release_resumes(self) -> None:
        held, self._held_resumes = self._held_resumes, set()
        if held:
            super().resume_partitions(held)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._release_resumes()

    def _seek_mark(self, tp: TP) -> int:
        return self._seeks.get(tp, 0)

    def _sought(self, tp: TP, offset: int | None) -> None:
        self._seeks[tp] = self._seeks.get(tp, 0) + 1
        self._targets[tp] = offset

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        # Faust's driver seeks synchronously from this loop: nothing ran in between.
        self._sought(partition, offset or None)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's ``seek_to_committed``, with every position moved at once.

        aiokafka's own version seeks one partition after another, with a request to the
        group coordinator between two seeks, so the drain loop could fetch fresh records
        of a partition already sought and take them for stale ones. Here the committed
        offsets are read first, then all partitions are sought in one call on the
        consumer's thread, and marked sought as soon as that call returns, before the
        drain loop (which runs on this loop) can look at another record.
        """
        thread: Any = self._thread
        consumer = thread._ensure_consumer()

        async def read_committed() -> dict[Any, Any]:
            # One OffsetFetch for all partitions, with the metadata (ingest keeps each
            # input partition's largest ts there).
            assigned = list(consumer.assignment())
            found = await consumer._coordinator.fetch_committed_offsets(assigned)
            return {tp: found.get(tp) for tp in assigned}

        found: dict[Any, Any] = await thread.call_thread(read_committed)
        committed: dict[Any, int | None] = {}
        for tp, om in found.items():
            committed[tp] = om.offset if om is not None and om.offset >= 0 else None
            key = TP(tp.topic, tp.partition)
            if om is not None and om.offset >= 0 and om.metadata:
                self.committed_metadata[key] = om.metadata
            else:
                self.committed_metadata.pop(key, None)

        async def seek_all() -> list[tuple[Any, int]]:
            assigned = consumer.assignment()
            moved = []
            for tp, offset in committed.items():
                # As aiokafka: no committed offset leaves the position where it is.
                if offset and offset > 0 and tp in assigned:
                    consumer.seek(tp, offset)
                    moved.append((tp, offset))
            return moved

        for tp, offset in await thread.call_thread(seek_all):
            self._sought(TP(tp.topic, tp.partition), offset)
        # None for "nothing committed", as aiokafka returns and Faust's perform_seek expects.
        return {TP(tp.topic, tp.partition): o for tp, o in committed.items()}  # type: ignore[misc]

    async def committed_offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int, str] | None]:
        """The group's committed offset and its metadata for each of ``tps``, read from the
        broker now, in one request (None: nothing committed). app/engine/transaction.py asks
        after replacing a producer."""
        thread: Any = self._thread
        consumer = thread._ensure_consumer()
        wanted = list(tps)

        async def read_committed() -> dict[TP, tuple[int, str] | None]:
            found = await consumer._coordinator.fetch_committed_offsets(
                [TopicPartition(tp.topic, tp.partition) for tp in wanted]
            )
            out: dict[TP, tuple[int, str] | None] = {}
            for tp in wanted:
                om = found.get(TopicPartition(tp.topic, tp.partition))
                out[tp] = None if om is None or om.offset < 0 else (om.offset, om.metadata)
            return out

        committed: dict[TP, tuple[int, str] | None] = await thread.call_thread(read_committed)
        return committed

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As Faust does: the flow stopped for a rebalance, so start again from the
            # committed offsets.
            await self.perform_seek()
            return

        def current() -> bool:
            return self.flow_active and self.app.consumer_generation_id == generation_id

        fetched_at = {tp: self._seek_mark(tp) for tp in records}
        held_back: dict[TP, int] = {}
        tapped: dict[BatchHandler, dict[TP, Sequence[Any]]] = {h: {} for h in _every_fetch}
        rest: dict[TP, Any] = {}
        buffered = self._buffered_partitions
        for tp, batch in records.items():
            handler = _taps.get(tp.topic)
            if handler is None:
                rest[tp] = batch
            elif not batch:
                continue
            elif active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                tapped.setdefault(handler, {})[tp] = batch
            else:
                held_back[tp] = batch[0].offset
        if tapped:
            # Handlers of different topics share nothing but the producers' locks.
            try:
                await asyncio.gather(*(handler(recs, current) for handler, recs in tapped.items()))
            except Exception as exc:
                # What a failed handler applied is unknown: stop the worker; a restart
                # resumes from the offsets committed with the last complete batch.
                await self.app.crash(exc)
                raise
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(rest):
            if not current():
                # A rebalance or stop: Faust seeks every partition to its committed offset
                # before the flow resumes, which re-reads whatever was not handed on.
                return
            if tp in held_back:
                continue  # keep each partition in order: nothing after a skipped record
            if self._seek_mark(tp) != fetched_at[tp]:
                continue  # sought since this batch was fetched: the rest of it is stale
            if active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
                if self._seek_mark(tp) != fetched_at[tp]:
                    # Sought while this record was being handed on: Faust has just moved
                    # the read offset to it, past where the seek put the partition.
                    self._read_offset[tp] = self._targets.get(tp)
            else:
                held_back[tp] = record.offset
        # Paused while its records waited: nothing else will ever re-read them.
        assigned = self.assignment()
        for tp, offset in held_back.items():
            if tp in assigned and self._seek_mark(tp) == fetched_at[tp]:
                await self.seek(tp, offset)
