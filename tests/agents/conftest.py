"""Agent tests: the agents' batch functions on in-memory tables, no broker.

The app is built once per test session with ``STORE_URL=memory://``; every test gets
empty tables and fresh partition runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Before anything imports app.engine.instance (which reads the settings once).
os.environ["STORE_URL"] = "memory://"
os.environ.setdefault("TOPIC_PARTITIONS", "4")


@pytest.fixture(autouse=True)
def empty_tables() -> Iterator[None]:
    from agents import partition_runtime, tracker

    def clear() -> None:
        for table in partition_runtime.TABLES:
            table.data.data.clear()
            table.data._key_partition.clear()
        tracker.runtimes.clear()

    clear()
    yield
    clear()


@pytest.fixture
def poisoned_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order parser raises an unforeseen error for a message holding ``"poison"``."""
    from agents import rows

    real = rows.parse_order

    def flaky(raw: bytes | None, *args: Any) -> Any:
        if raw is not None and b'"poison"' in raw:
            raise RuntimeError("a rule nobody foresaw")
        return real(raw, *args)

    monkeypatch.setattr(rows, "parse_order", flaky)
