"""Talking to the cluster as an administrator: start-up housekeeping and a health probe.

Faust only declares topics that an agent consumes or a table logs to, so the output
topics (and the inputs, when no producer has written yet) are created here, before the
consumer subscribes, with ``TOPIC_PARTITIONS`` partitions and ``REPLICATION_FACTOR``
replicas (:func:`replication_factor` picks the default from the cluster's size).
:class:`ClusterProbe` asks the cluster every few seconds whether it answers and whether
the app's partitions have leaders, and reports to app/engine/health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.engine import health

log = logging.getLogger(__name__)


MIN_INSYNC_REPLICAS = 2
"""``min.insync.replicas`` of the app's topics when they have 3 or more replicas: a
write is acknowledged by two brokers, so losing any one broker loses nothing and stops
nothing."""


class ReplicationError(ValueError):
    """REPLICATION_FACTOR does not fit the cluster."""


async def replication_factor(bootstrap: str, wanted: int | None) -> int:
    """REPLICATION_FACTOR, or its default: 3 when the cluster has 3 brokers or more,
    else 1. Raises :class:`ReplicationError` when more replicas are asked for than the
    cluster has brokers."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()
    if wanted is None:
        return 3 if brokers >= 3 else 1
    if wanted > brokers:
        raise ReplicationError(
            f"REPLICATION_FACTOR is {wanted} but the cluster has {brokers} "
            f"broker{'s' if brokers != 1 else ''}"
        )
    return wanted


def replicated_config(replicas: int) -> dict[str, str]:
    """Topic configuration that goes with ``replicas`` replicas."""
    return {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)} if replicas >= 3 else {}


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[tuple[str, dict[str, str]]],
    partitions: int,
    replicas: int = 1,
) -> dict[str, int]:
    """Create each missing topic; warn about an existing one with other partition counts.

    Returns every topic's partition count as it is on the broker now.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = dict(topics)
        # list_topics first: describing a missing topic is a Metadata request, which a
        # broker with auto.create.topics.enable would answer by creating it, with
        # the broker's default partition count instead of ours.
        present = set(await admin.list_topics()) & set(wanted)
        have: dict[str, int] = {}
        for t in await admin.describe_topics(sorted(present)) if present else []:
            if _field(t, "error_code") == 0:
                have[_field(t, "topic")] = len(_field(t, "partitions"))
        missing = [
            NewTopic(
                name, partitions, replicas, topic_configs={**replicated_config(replicas), **config}
            )
            for name, config in wanted.items()
            if name not in have
        ]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # pragma: no cover - created meanwhile
                response = None
            for name, code, *_ in getattr(response, "topic_errors", []):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise RuntimeError(f"could not create topic {name}: error code {code}")
            log.info(
                "Created topics (%d replicas): %s", replicas, ", ".join(t.name for t in missing)
            )
            await _until_served(admin, [t.name for t in missing])
        for name, n in sorted(have.items()):
            if n != partitions:
                log.warning(
                    "Topic %s already exists with %d partitions (TOPIC_PARTITIONS is %d); "
                    "it is used as it is.",
                    name,
                    n,
                    partitions,
                )
        return {name: have.get(name, partitions) for name in wanted}
    finally:
        await admin.close()


SERVED_WAIT_S = 10.0
"""Longest a start waits for topics it created to be served (:func:`_until_served`)."""


async def _until_served(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Return once the cluster's metadata has a leader for every partition of ``names``
    (at most :data:`SERVED_WAIT_S`).

    A created topic reaches the brokers' metadata a little after CreateTopics answers
    (KRaft applies it asynchronously, later on a loaded machine). A group whose
    assignment is computed before that gets no partition of the topic, and nothing asks
    again: a first start then ran with no partitions at all. Faust's table manager slept
    a second before subscribing, which mostly hid this (app/engine/restore.py).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVED_WAIT_S
    pending = set(names)
    while True:
        for t in await admin.describe_topics(sorted(pending)):
            partitions = _field(t, "partitions")
            if (
                _field(t, "error_code") == 0
                and partitions
                and all(_field(p, "leader") >= 0 for p in partitions)
            ):
                pending.discard(_field(t, "topic"))
        if not pending:
            return
        if loop.time() >= deadline:
            log.warning(
                "Topics created but not served after %.0f s: %s", SERVED_WAIT_S, sorted(pending)
            )
            return
        await asyncio.sleep(0.05)


class ClusterProbe:
    """Asks the cluster whether it answers and which of ``topics()``' partitions have no
    leader; reports each answer to app/engine/health.py (:meth:`run` once per tick)."""

    TIMEOUT_S = 5.0

    def __init__(self, bootstrap: str, topics: Callable[[], Iterable[str]]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self._admin: AIOKafkaAdminClient | None = None

    ATTEMPTS = 3

    async def run(self) -> None:
        # Each attempt asks one broker picked at random: in a cluster with one broker
        # down, an attempt that picked it says nothing about the others.
        error = "no answer"
        for _ in range(self.ATTEMPTS):
            try:
                leaderless = await asyncio.wait_for(self._leaderless(), self.TIMEOUT_S)
            except Exception as exc:
                await self._drop_admin()
                error = (f"{type(exc).__name__}: {exc}".rstrip(": ") or error)[:200]
                continue
            health.probed(None, leaderless)
            return
        health.probed(error)

    async def _leaderless(self) -> tuple[str, ...]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.TIMEOUT_S * 1000)
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        names = sorted(set(self.topics()))
        # An empty list would mean "every topic"; the cluster answering is enough then.
        found = await self._admin.describe_topics(names) if names else []
        return tuple(
            f"{_field(t, 'topic')}[{_field(p, 'partition')}]"
            for t in found
            if _field(t, "error_code") == 0
            for p in _field(t, "partitions")
            if _field(p, "leader") < 0
        )

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def close(self) -> None:
        await self._drop_admin()


def _field(topic: Any, name: str) -> Any:
    return topic[name] if isinstance(topic, dict) else getattr(topic, name)
