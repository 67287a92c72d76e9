"""Fixtures for the integration tests: one real Kafka broker per test session; and, when
a test fails, the last lines of every worker log it produced, printed with the failure
and kept under ``artifacts/failed/``."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import REPO, STARTED, Worker, throwaway_broker

FAILED_LOGS = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "artifacts") / "failed"
TAIL_LINES = 40


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


# --- a failed test leaves a diagnosis ----------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_FIRST_WORKER] = len(STARTED)


_FIRST_WORKER = pytest.StashKey[int]()


def workers_of(item: pytest.Item) -> list[Worker]:
    """The workers a test started, and any still running (a module's shared worker)."""
    first = item.stash.get(_FIRST_WORKER, len(STARTED))
    return [w for i, w in enumerate(STARTED) if i >= first or w.running()]


def keep_logs(item: pytest.Item, workers: list[Worker]) -> list[tuple[str, str]]:
    """Copy each worker log to ``artifacts/failed/<test>/``; (title, last lines) of each."""
    folder = FAILED_LOGS / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[:150]
    sections = []
    for n, w in enumerate(workers):
        for log in w.logs():
            kept = folder / f"worker{n}-{w.app_id}-{log.name}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, kept)
                lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
            except OSError as exc:
                sections.append((f"worker log {log}", f"(unreadable: {exc})"))
                continue
            state = "running" if w.running() else "stopped"
            title = f"last {len(lines)} lines of {log} ({state}; kept as {kept})"
            sections.append((title, "\n".join(lines)))
    return sections


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for title, text in keep_logs(item, workers_of(item)):
            report.sections.append((title, text))
