"""Exactly once, proven: SIGKILL the worker mid-stream, restart it, compare with an oracle.

The oracle below is written from the contract alone (it shares no code with the app).
Each phase writes one topic, keyed by SKU, so the order in which the events of one SKU
reach the join is the order the test wrote them, and the oracle can replay it exactly.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from tests.integration.harness import REPO, Worker, produce
from tests.integration.oracle import Oracle, check_results

pytestmark = pytest.mark.integration

T0 = 1_795_694_400.0  # 2026-11-18T12:00:00Z


def make_events(seed: int, skus: int, orders: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Initial deliveries, orders (with duplicates), then restock deliveries."""
    rng = random.Random(seed)
    names = [f"SKU-{i:04d}" for i in range(skus)]
    initial = [
        {
            "event_id": f"init-{s}",
            "sku": s,
            "reason": "delivery",
            "quantity": rng.randint(30, 80),
            "supplier_id": "acme",
            "ts": T0,
        }
        for s in names
    ]
    stream: list[dict[str, Any]] = []
    for i in range(orders):
        sku = names[min(int(rng.paretovariate(1.2)) - 1, skus - 1)]
        stream.append(
            {
                "order_id": f"ord-{i}",
                "customer_id": f"c{rng.randint(1, 500)}",
                "sku": sku,
                "quantity": rng.randint(1, 5),
                "unit_price": round(rng.uniform(1, 50), 2),
                "ts": T0 + 1 + i * 0.05,
            }
        )
        if rng.random() < 0.02:  # a producer retry: the same order again, later
            stream.append(dict(stream[rng.randrange(len(stream))]))
    restock = [
        {
            "event_id": f"re-{s}-{k}",
            "sku": s,
            "reason": "delivery",
            "quantity": rng.randint(10, 90),
            "ts": T0 + orders * 0.05 + 10 + k,
        }
        for k in range(3)
        for s in names
    ]
    restock += [
        {
            "event_id": f"ret-{s}",
            "sku": s,
            "reason": "return",
            "quantity": 1,
            "ts": T0 + orders * 0.05 + 20,
        }
        for s in names[:20]
    ]
    return initial, stream, restock


def by_sku(ev: dict[str, Any]) -> str:
    return str(ev["sku"])


def kill_during(worker: Worker, target: int, fraction: float) -> int:
    """SIGKILL the worker once it has processed ``fraction`` of the way to ``target``."""
    start = worker.get("/stats")[1]["processed"]
    goal = start + int((target - start) * fraction)
    deadline = time.monotonic() + 120
    processed = start
    while time.monotonic() < deadline:
        processed = worker.get("/stats")[1]["processed"]
        if processed >= goal:
            break
        time.sleep(0.02)
    worker.kill()
    return processed


@pytest.mark.parametrize("join_read", ["direct", "repartition"])
def test_sigkill_mid_stream_loses_and_doubles_nothing(
    worker_factory: Any, kafka: str, join_read: str
) -> None:
    initial, stream, restock = make_events(seed=7, skus=300, orders=21_000)
    oracle = Oracle()
    worker: Worker = worker_factory(JOIN_READ=join_read)
    worker.start()

    # Phase A: opening stock.
    produce(kafka, worker.topic("stock"), initial, key=by_sku)
    for ev in initial:
        oracle.apply("s", ev)
    worker.wait_for("/stats", lambda b: b["processed"] >= oracle.applied)

    # Phase B: orders, killed mid-way.
    produce(kafka, worker.topic("orders"), stream, key=by_sku)
    for ev in stream:
        oracle.apply("o", ev)
    killed_at_b = kill_during(worker, oracle.applied, 0.4)
    worker.start()
    worker.wait_for("/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=180)

    # Phase C: restock and returns, killed mid-way again.
    produce(kafka, worker.topic("stock"), restock, key=by_sku)
    for ev in restock:
        oracle.apply("s", ev)
    killed_at_c = kill_during(worker, oracle.applied, 0.5)
    worker.start()
    # Every count, level and supplier order over HTTP; exactly one committed
    # order-status per order, each supplier-order change once, in order per SKU; one
    # stock-levels message per applied event.
    checked = check_results(worker, kafka, oracle)

    figures = {
        "join_read": join_read,
        "events_produced": len(initial) + len(stream) + len(restock),
        "events_applied": oracle.applied,
        "duplicates_in_input": oracle.duplicates,
        "killed_after_processed": [killed_at_b, killed_at_c],
        "order_status_messages": checked["order_status_messages"],
        "orders_with_more_than_one_status": checked["orders_doubled"],
        "supplier_order_changes": checked["supplier_order_changes"],
    }
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / f"crash-test-{join_read}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
