"""``PROCESSING_GUARANTEE=at_least_once``: no transactions, same answers, even after a restart.

Outputs may repeat after a crash in this mode (that is its contract); the tables must not
double-count, because the rules skip what they have already applied.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.integration.harness import Worker, produce

pytestmark = pytest.mark.integration


def orders(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "order_id": f"al-{i}",
            "customer_id": "c",
            "sku": f"AL-{i % 7}",
            "quantity": 1 + i % 2,
            "unit_price": 1.0,
            "ts": 1_795_694_400 + i,
        }
        for i in range(first, first + count)
    ]


def test_at_least_once_counts_each_order_once_across_a_restart(worker_factory: Any) -> None:
    w: Worker = worker_factory(PROCESSING_GUARANTEE="at_least_once")
    w.start()
    first = orders(0, 700)
    produce(w.bootstrap, w.topic("orders"), first, key=lambda v: v["sku"])
    w.wait_for("/stats", lambda b: b["processed"] == len(first), timeout_s=90)
    w.stop()
    w.start()
    second = orders(700, 300)
    produce(w.bootstrap, w.topic("orders"), second, key=lambda v: v["sku"])
    total = len(first) + len(second)
    stats = w.wait_for("/stats", lambda b: b["processed"] >= total, timeout_s=90)
    assert stats["processed"] == total and stats["duplicates"] == 0

    levels: Counter[str] = Counter()
    for o in first + second:
        levels[o["sku"]] -= o["quantity"]
    for sku, level in levels.items():
        assert w.get(f"/stock/{sku}")[1]["level"] == level, sku
    for o in (first + second)[::97]:
        status, record = w.get(f"/orders/{o['order_id']}")
        assert status == 200 and record["quantity"] == o["quantity"]
