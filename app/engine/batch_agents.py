"""``@batch_agent``: Faust-style agents that get whole fetches of raw records.

Faust's ``@app.agent`` turns every record into a ``Message`` and feeds it through the
conductor, a stream queue and the agent's ack tracking; the app's two busy agents
(ingest and the tracker) need none of that (app/engine/consumer.py measures the cost).
A batch agent is declared the same way and is listed by ``faust -A app agents`` with its
topics and help text, but its handler is tapped into the consumer: it gets each fetch
of its topics as ``{TP: [ConsumerRecord, ...]}`` plus a ``current()`` callable, and
commits its own offsets (app/engine/transaction.py).

:class:`BatchAgent` is what Faust's agent manager holds for it: it implements the
part of Faust's ``AgentT`` the manager and the ``agents`` command use (start, stop,
rebalance notices, topic names, help), all of which are no-ops here because the
consumer, not an actor, drives the handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from app.engine.consumer import BatchHandler, tap
from app.engine.instance import app


class _Channel:
    """What ``faust agents`` shows in the topic column (one or several names)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def get_topic_name(self) -> str:
        return ", ".join(self.names)


class BatchAgent:
    """One batch agent, as Faust's agent manager and ``faust agents`` see it."""

    def __init__(self, name: str, handler: BatchHandler, topics: Sequence[Any], help: str) -> None:
        self.name = name
        self.handler = handler
        self.help = help
        self.channel = _Channel([t.get_topic_name() for t in topics])

    def get_topic_names(self) -> Iterable[str]:
        return self.channel.names

    async def maybe_start(self) -> None:
        """Nothing to start: the consumer calls the handler once per fetch."""

    async def stop(self) -> None:
        """Nothing to stop: the consumer stops calling the handler."""

    def cancel(self) -> None:
        pass

    def service_reset(self) -> None:
        pass

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """The handler learns of rebalances through ``current()`` (app/engine/consumer.py)."""

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        pass

    def actor_tracebacks(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"<BatchAgent {self.name}: {self.channel.get_topic_name()}>"


def batch_agent(
    *topics: Any, name: str, help: str, every_fetch: bool = False
) -> Callable[[BatchHandler], BatchHandler]:
    """Declare ``handler(records, current)`` as the batch agent ``name`` of ``topics``.

    The topics are subscribed without a stream; each fetch's records of them go to the
    handler (with ``every_fetch``, also a fetch that brought none: ``{}``, e.g. to
    notice that a partition reached its end). Returns the handler unchanged.
    """

    def register(handler: BatchHandler) -> BatchHandler:
        for topic in topics:
            app.topics.add(topic)
            tap(topic.get_topic_name(), handler, every_fetch=every_fetch)
        manager: Any = app.agents
        manager[name] = BatchAgent(name, handler, topics, help)
        return handler

    return register


def listed_agent(*topics: Any, name: str, help: str) -> None:
    """List ``name`` among the agents (``faust -A app agents``) as reading ``topics``,
    for a task that reads them with a consumer of its own (nothing is subscribed)."""

    async def _not_tapped(records: Any, current: Callable[[], bool]) -> None:
        raise AssertionError(f"{name} reads its topics itself")

    manager: Any = app.agents
    manager[name] = BatchAgent(name, _not_tapped, topics, help)
