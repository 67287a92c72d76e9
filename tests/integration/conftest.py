"""Fixtures for the integration tests: one real Kafka broker per test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Worker, free_port


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a throwaway broker (or KAFKA_BOOTSTRAP if one is given)."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port = free_port()
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        KAFKA_DATA_DIR=str(tmp_path_factory.mktemp("kafka")),
    )
    script = str(REPO / "scripts" / "kafka")
    subprocess.run([script, "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], env=env, check=False)


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
