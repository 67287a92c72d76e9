"""Log levels of the retries a normal start is made of.

While a group, a transaction coordinator or a new topic comes up, the broker answers
"not yet" (``GroupCoordinatorNotAvailable``, ``NotEnoughReplicas`` on a partition just
created, ...) and aiokafka retries by itself, logging each answer as a WARNING or an
ERROR. A new user reads a dozen of those at every start as "broken". This module owns
the decision to log exactly those retried answers at INFO; everything else (an error
aiokafka does not retry, a failed request that ends a task) keeps its level.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError


def _is_retried(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if record.name == "aiokafka.consumer.group_coordinator":
        if message.startswith("Marking the coordinator dead"):
            # Followed by a new FindCoordinator request; a lasting outage shows in
            # /health and in the requests that then fail.
            return True
        if message.startswith("Group Coordinator Request failed"):
            return _first_arg_retriable(record)
    if record.name == "aiokafka.producer.sender":
        return message.startswith("Got error produce response on topic-partition") and (
            "retrying" in message
        )
    return False


def _first_arg_retriable(record: logging.LogRecord) -> bool:
    args: Any = record.args
    first = args[0] if isinstance(args, tuple) and args else None
    return isinstance(first, KafkaError) and bool(first.retriable)


class RetriesAtInfo(logging.Filter):
    """Lowers the records of retried "not yet" answers to INFO; passes every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO and _is_retried(record):
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


LOGGERS = ("aiokafka.consumer.group_coordinator", "aiokafka.producer.sender")
"""The loggers whose records :class:`RetriesAtInfo` looks at (a logger's filters see
only the records logged to it, not those of its children)."""


def quiet_expected_retries() -> None:
    """Install :class:`RetriesAtInfo` once on each of :data:`LOGGERS`."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RetriesAtInfo) for f in logger.filters):
            logger.addFilter(RetriesAtInfo())
