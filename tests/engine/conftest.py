"""Fixtures for the engine tests: one throwaway Kafka broker for the package (or
``KAFKA_BOOTSTRAP`` if one is given), and the engine's module state kept out of them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.harness import throwaway_broker

# As tests/agents/conftest.py, before anything imports app.engine.instance (which reads
# the settings once), in case a module under test does.
os.environ["STORE_URL"] = "memory://"
os.environ.setdefault("TOPIC_PARTITIONS", "4")


@pytest.fixture(scope="package")
def kafka() -> Iterator[str]:
    """Bootstrap address of a broker shared by the tests of this package."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    with throwaway_broker() as bootstrap:
        yield bootstrap


@pytest.fixture
def engine_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine consumer's module state (its batch taps, the worker's consumer), empty
    for the test and restored after it: a consumer a test builds must neither call the
    app's registered handlers nor stay the app's consumer."""
    from app.engine import consumer

    monkeypatch.setattr(consumer, "_taps", {})
    monkeypatch.setattr(consumer, "_every_fetch", set())
    monkeypatch.setattr(consumer, "_consumer", consumer._consumer)
