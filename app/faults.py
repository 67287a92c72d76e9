"""Which failures are the cluster's (wait and retry) and which are the batch's (do not).

Pure classification, shared by the modules that retry through broker outages
(app/transaction.py, tables/restore.py).
"""

from __future__ import annotations

import asyncio

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
