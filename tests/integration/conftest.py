"""Fixtures for the integration tests: one real Kafka broker per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Worker, throwaway_broker


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a throwaway broker (or KAFKA_BOOTSTRAP if one is given)."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    with throwaway_broker(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture
def worker_factory(kafka: str, tmp_path: Path) -> Iterator[type[Worker]]:
    """Build workers on the session broker; every one is stopped after the test."""
    made: list[Worker] = []

    def make(app_id: str | None = None, **env: str) -> Worker:
        # Workers given the same app_id form one group on the same topics.
        w = Worker(kafka, tmp_path / f"w{len(made)}", env_extra=env)
        if app_id is not None:
            w.app_id = app_id
        made.append(w)
        return w

    yield make  # type: ignore[misc]
    for w in made:
        w.stop()


@pytest.fixture
def worker(worker_factory: type[Worker]) -> Worker:
    """A started worker with its own app id and topics."""
    w = worker_factory()  # type: ignore[call-arg]
    w.start()
    return w
