"""Faust's own consumer classes, driven on the test's event loop against a real broker.

The tests of the Faust bugs the engine works around (tests/engine/test_upstream_*.py)
need Faust's code paths exactly as a worker runs them, but deterministically: no
rebalance, no recovery, no timers deciding when something happens. So a consumer of
either class (Faust's or ours) is built from a bare ``faust.App`` as Faust's transport
builds it, and only two things differ from a worker:

- its consumer thread runs what it is asked on the test's loop instead of a thread of
  its own (``call_thread``), with an aiokafka client Faust configured itself
  (``_create_worker_consumer``: group id, isolation level, fetch sizes) but assigned
  its partitions by hand instead of by a group rebalance;
- Faust's drain loop (``Consumer._drain_messages``, the loop a worker's fetcher runs)
  hands the records to a :class:`Drain` that records their offsets and lets a test act
  at a chosen record (pause a partition, seek), the way a rebalance or Faust's recovery
  does while a batch is being handed on, or before the next fetch (a wrapper around
  ``getmany`` that runs the test's action, then Faust's method unchanged).

Everything else (``getmany``, the read offsets, seeks, acks, commits, aiokafka's fetcher)
is the library's and the engine's code unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP
from mode import Service

from tests.integration.harness import unique

TIMEOUT_S = 60.0
"""Longest any condition is waited for (generous: the machine is shared and loaded)."""

UPSTREAM_FIXED = (
    "upstream fixed {bug} (faust-streaming {version}): retire {ours}, "
    "and this test with it. Stock Faust now gave: {seen}"
)


def upstream_fixed(bug: str, ours: str, seen: object) -> str:
    """The failure message of a "stock Faust shows the bug" assertion."""
    return UPSTREAM_FIXED.format(bug=bug, version=faust.__version__, ours=ours, seen=seen)


def internal(owner: Any, name: str) -> Any:
    """``owner.name``: a private attribute of Faust, mode or aiokafka that these tests
    rely on. Missing (a new release renamed it), the test fails naming it, not with a
    bare AttributeError that could pass for anything: adapt the harness first; it says
    nothing yet about the bug."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise AssertionError(
            f"faust-streaming {faust.__version__}: {type(owner).__qualname__}.{name} is "
            f"gone; tests/engine relies on it: adapt the harness"
        ) from None


def replace_internal(owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name`` (an internal, see :func:`internal`) to ``value``."""
    internal(owner, name)
    setattr(owner, name, value)


def kafka_client(consumer: Any) -> Any:
    """The aiokafka consumer under a Faust consumer built by :func:`consumer_on_loop`."""
    return internal(internal(consumer, "_thread"), "_ensure_consumer")()


def bare_app(bootstrap: str, *, exactly_once: bool = False) -> faust.App:
    """A Faust app with nothing declared: no agents, tables, web server or discovery,
    set up as in a worker (Faust uses transactions only there)."""
    app = faust.App(
        unique("engine"),
        broker=f"kafka://{bootstrap}",
        store="memory://",
        processing_guarantee="exactly_once" if exactly_once else "at_least_once",
        consumer_auto_offset_reset="earliest",
        # More than a test writes: a fetch hands on a whole record batch.
        broker_max_poll_records=1_000,
        web_enabled=False,
        autodiscover=False,
    )
    app.in_worker = True  # as faust.Worker does
    return app


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce_one_batch(bootstrap: str, topic: str, values: Iterable[bytes]) -> None:
    """Write ``values`` to partition 0 of ``topic`` as ONE record batch, so that the first
    fetch that sees any of them returns all of them (aiokafka fetches whole batches)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        for value in values:
            assert batch.append(key=None, value=value, timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


async def committed_offset(bootstrap: str, group: str, tp: TP) -> int | None:
    """The offset ``group`` has committed for ``tp``, read from the broker now."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        found: int | None = await reader.committed(TopicPartition(tp.topic, tp.partition))
        return found
    finally:
        await reader.stop()


async def commit_in_transaction(
    bootstrap: str, transactional_id: str, group: str, offsets: dict[TP, int]
) -> None:
    """Commit ``offsets`` for ``group`` in a transaction of its own (as app/engine/transaction.py
    commits a batch's input offsets), and wait until they are the group's."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_offsets_to_transaction(
                {TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()}, group
            )
    finally:
        await producer.stop()
    await complete_transactions(bootstrap, transactional_id)


async def complete_transactions(bootstrap: str, transactional_id: str) -> None:
    """Return once every transaction of ``transactional_id`` has ended, its offsets (if it
    committed) applied to the group, by doing what a partition's next owner does: start a
    producer of the same id (its InitProducerId waits for a transaction being committed to
    complete, and aborts one left open)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    await producer.stop()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after :data:`TIMEOUT_S`."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


class Drain:
    """What Faust's drain loop handed on, in order, and a hook at a chosen record.

    ``at(offset, action)`` runs ``action(message)`` while the record at ``offset`` is
    being handed on (inside the consumer's callback, as an agent or a rebalance would).
    ``before_next_fetch(action)`` runs ``action()`` when the drain loop asks for its next
    fetch, i.e. once everything of the current fetch was handed on or skipped.
    """

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.messages: list[Any] = []
        self._at: dict[int, Callable[[Any], Awaitable[None]]] = {}
        self._before_fetch: list[Callable[[], None]] = []

    def at(self, offset: int, action: Callable[[Any], Awaitable[None]]) -> None:
        self._at[offset] = action

    def before_next_fetch(self, action: Callable[[], None]) -> None:
        self._before_fetch.append(action)

    async def deliver(self, message: Any) -> None:
        """The consumer's callback (a worker's is the conductor's ``on_message``)."""
        self.offsets.append(message.offset)
        self.messages.append(message)
        action = self._at.pop(message.offset, None)
        if action is not None:
            await action(message)

    def _fetching(self) -> None:
        actions, self._before_fetch = self._before_fetch, []
        for action in actions:
            action()


async def _here(fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A consumer thread's ``call_thread``, run on the calling loop instead."""
    result = fun(*args, **kwargs)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        result = await result
    return result


async def _no_revoke(revoked: Any) -> None:
    return None


async def _no_assign(assigned: Any, generation_id: int = 0) -> None:
    return None


@contextlib.asynccontextmanager
async def consumer_on_loop(
    consumer_class: type[Any], app: faust.App, tps: Iterable[TP], drain: Drain | None = None
) -> AsyncIterator[Any]:
    """A consumer of ``consumer_class`` on ``app``, assigned ``tps``; with a ``drain``,
    the partitions are active and Faust's drain loop hands their records to it (without,
    nothing is handed on, as for changelog partitions during recovery). Everything is
    stopped on exit."""
    tps = list(tps)
    consumer = consumer_class(
        app.transport,
        callback=(drain or Drain()).deliver,
        on_partitions_revoked=_no_revoke,
        on_partitions_assigned=_no_assign,
        loop=asyncio.get_running_loop(),
    )
    thread = internal(consumer, "_thread")
    client = internal(thread, "_create_worker_consumer")(app.transport)
    await client.start()
    fetcher = Service()
    drain_task: asyncio.Task[None] | None = None
    try:
        client.assign([TopicPartition(tp.topic, tp.partition) for tp in tps])
        replace_internal(thread, "_consumer", client)
        replace_internal(thread, "call_thread", _here)
        if drain is None:
            yield consumer
            return
        # As at the end of a rebalance: the partitions are active and the flow runs.
        consumer.resume_partitions(tps)
        consumer.resume_flow()

        getmany = consumer.getmany

        async def getmany_after_hooks(timeout: float) -> AsyncIterator[Any]:
            drain._fetching()
            async for item in getmany(timeout):
                yield item

        # The drain loop looks the method up once, when it starts.
        consumer.getmany = getmany_after_hooks
        drain_task = asyncio.ensure_future(internal(consumer, "_drain_messages")(fetcher))
        yield consumer
    finally:
        if drain_task is not None:
            drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain_task
        await client.stop()
        # The thread's own loop, made when the thread was built, was never run.
        internal(thread, "thread_loop").close()
