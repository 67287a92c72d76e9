"""Health and fault rules without a broker: /health's reasons, what is retried, log limits."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    ProducerFenced,
)

from app.engine import health
from app.engine.faults import OutageLogFilter, retriable


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    health.state = health.Health()


def test_ok_until_something_is_reported() -> None:
    assert health.degraded() is None


def test_an_unreachable_broker_is_named() -> None:
    health.probed("KafkaConnectionError: Unable to bootstrap")
    assert health.degraded() == "broker unreachable: KafkaConnectionError: Unable to bootstrap"
    health.probed(None)
    assert health.degraded() is None


def test_partitions_without_a_leader_are_listed() -> None:
    health.probed(None, tuple(f"t[{p}]" for p in range(7)))
    reason = health.degraded()
    assert reason is not None
    assert reason.startswith("partitions without a leader: t[0], t[1]")
    assert reason.endswith("and 2 more")


def test_failing_commits_degrade_until_each_one_ends() -> None:
    health.commit_failed("app-1-0", "KafkaTimeoutError")
    health.commit_failed("app-1-1", "NotEnoughReplicasError")
    reason = health.degraded()
    assert reason is not None and "commits failing" in reason and "2 producers" in reason
    health.commit_ended("app-1-0")
    assert health.degraded() is not None
    health.commit_ended("app-1-1")
    assert health.degraded() is None


def test_stopping_wins_and_never_goes_back() -> None:
    health.probed("gone")
    health.stopping()
    assert health.degraded() == "stopping"
    health.probed(None)
    assert health.degraded() == "stopping"


@pytest.mark.parametrize(
    "exc",
    [
        KafkaConnectionError("closed"),
        KafkaTimeoutError(),
        NotEnoughReplicasError(),
        ProducerFenced(),
        TimeoutError(),
        ConnectionResetError(),
    ],
)
def test_cluster_failures_are_retried(exc: BaseException) -> None:
    assert retriable(exc)


@pytest.mark.parametrize("exc", [MessageSizeTooLargeError(), ValueError("bad"), KeyError("x")])
def test_failures_of_the_batch_are_not(exc: BaseException) -> None:
    assert not retriable(exc)


def _record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka", level, __file__, 1, msg, ("n",), None)


def test_outage_logs_are_rate_limited_and_lowered() -> None:
    f = OutageLogFilter(window_s=3600)
    first = _record("Unable connect to node with id %s")
    assert f.filter(first) and first.levelno == logging.WARNING
    assert not any(f.filter(_record("Unable connect to node with id %s")) for _ in range(999))
    # Another kind of message has its own allowance; INFO is never touched.
    assert f.filter(_record("Failed fetch messages from %s"))
    assert all(f.filter(_record("x %s", logging.INFO)) for _ in range(5))


def test_the_next_line_after_the_window_counts_what_was_held_back() -> None:
    f = OutageLogFilter(window_s=0.0)
    assert f.filter(_record("Unable connect to node with id %s"))
    f.window_s = 3600
    assert not f.filter(_record("Unable connect to node with id %s"))
    f.window_s = 0.0
    later = _record("Unable connect to node with id %s")
    assert f.filter(later) and "(1 more like this" in str(later.msg)
