"""Failures of the cluster: which errors are its (wait and retry) and which the batch's
(do not), and keeping the Kafka client's logs readable while a broker is gone.

Shared by the modules that retry through broker outages (app/engine/transaction.py,
app/engine/restore.py); app/engine/instance.py installs the log filter.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import (
    InvalidTopicError,
    KafkaConfigurationError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
)
from faust.exceptions import ProducerSendError

_FATAL = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
    KafkaConfigurationError,
)
"""Errors no retry can cure: the batch itself (or the set-up) is wrong."""


def retriable(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the cluster or the producer, cured by waiting and
    replacing the producer (connection lost, timeouts, no leader, fenced), not one of
    the batch."""
    if isinstance(exc, _FATAL):
        return False
    return isinstance(exc, KafkaError | OSError | asyncio.TimeoutError | ProducerSendError)


QUIET_WINDOW_S = 30.0
"""Per kind of client message, at most one line per this many seconds during an outage."""

_CLIENT_LOGGERS = (
    "aiokafka",
    "aiokafka.cluster",
    "aiokafka.conn",
    "aiokafka.admin.client",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)


class OutageLogFilter(logging.Filter):
    """Rate-limits the Kafka client's complaints about brokers it cannot reach.

    With a broker gone, aiokafka logs every failed connection attempt, fetch and
    produce retry, a thousand lines in half a minute, most of them at ERROR although
    the client recovers by itself. Here each kind of message (its logger and format
    string) is let through once per :data:`QUIET_WINDOW_S`, at WARNING, saying how many
    like it were held back; what the worker itself concludes is logged by
    app/engine/transaction.py and shown by ``/health``.
    """

    def __init__(self, window_s: float = QUIET_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno > logging.ERROR:
            return True
        kind = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.window_s:
            self._last[kind] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last[kind] = (now, 0)
        if record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.window_s:.0f} s)"
        return True


def quiet_client_logs() -> None:
    """Install :class:`OutageLogFilter` on the Kafka client's loggers (once)."""
    for name in _CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OutageLogFilter) for f in logger.filters):
            logger.addFilter(OutageLogFilter())
