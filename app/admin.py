"""Start-up housekeeping: the topics the contract names exist, local state is fresh.

Faust only declares topics that an agent consumes or a table logs to, so the output
topics (and the inputs, when no producer has written yet) are created here, before the
consumer subscribes, with ``TOPIC_PARTITIONS`` partitions.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap: str, topics: Iterable[tuple[str, dict[str, str]]], partitions: int
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
            NewTopic(name, partitions, 1, topic_configs=config)
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
            log.info("Created topics: %s", ", ".join(t.name for t in missing))
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


def _field(topic: Any, name: str) -> Any:
    return topic[name] if isinstance(topic, dict) else getattr(topic, name)


def wipe_local_tables(tabledir: Path) -> None:
    """Delete the local table stores; Faust rebuilds them from their changelogs.

    Under exactly-once a store may hold writes of a transaction that a crash aborted;
    the changelog (read_committed) never does. Like Kafka Streams after an unclean
    shutdown, the local copy is thrown away rather than trusted.
    """
    if tabledir.exists():
        shutil.rmtree(tabledir)
        log.info("Removed local table state in %s (rebuilt from changelogs)", tabledir)
