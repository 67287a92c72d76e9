"""Agent tests: the agents' batch functions on in-memory tables, no broker.

The app is built once per test session with ``STORE_URL=memory://``; every test gets
empty tables and fresh partition runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
