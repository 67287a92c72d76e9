"""ensure_topics returns only once the topics it created are served (app/engine/admin.py).

A group whose first assignment is computed before a created topic reaches the brokers'
metadata gets none of its partitions, and nothing asks again: a first start ran with no
partitions at all, on a loaded machine. The broker's lag is not reproducible on demand,
so the waiting is checked against an admin client whose metadata lags on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import admin

UNKNOWN_TOPIC = 3


class LaggingAdmin:
    """Describes each topic as unknown, then leaderless, then served, call by call."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.calls = 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.lag:
            return [{"topic": n, "error_code": UNKNOWN_TOPIC, "partitions": []} for n in names]
        leader = 1 if self.calls > self.lag + 1 else -1
        return [
            {
                "topic": n,
                "error_code": 0,
                "partitions": [{"partition": p, "leader": leader} for p in range(4)],
            }
            for n in names
        ]


def test_created_topics_are_waited_for_until_every_partition_has_a_leader() -> None:
    lagging = LaggingAdmin(lag=3)
    asyncio.run(admin._until_served(lagging, ["a", "b"]))  # type: ignore[arg-type]
    assert lagging.calls == 5  # 3 unknown, 1 leaderless, then served


def test_the_wait_is_bounded(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(admin, "SERVED_WAIT_S", 0.2)
    lagging = LaggingAdmin(lag=10**9)
    asyncio.run(admin._until_served(lagging, ["a"]))  # type: ignore[arg-type]
    assert "Topics created but not served after" in caplog.text
