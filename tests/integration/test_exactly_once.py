"""Exactly once, proven: SIGKILL the worker mid-stream, restart it, compare with an oracle.

The oracle below is written from the contract alone (it shares no code with the app).
Each phase writes one topic, keyed by SKU, so the order in which the events of one SKU
reach the join is the order the test wrote them, and the oracle can replay it exactly.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.harness import REPO, Worker, produce, read_topic

pytestmark = pytest.mark.integration

REORDER_POINT, REORDER_TARGET = 20, 100
T0 = 1_795_694_400.0  # 2026-11-18T12:00:00Z


@dataclass
class Oracle:
    """The contract's stock semantics, applied in arrival order."""

    levels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    statuses: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    open_so: dict[str, dict[str, Any]] = field(default_factory=dict)
    so_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    so_changes: list[tuple[str, str, int, str]] = field(default_factory=list)
    so_final: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    duplicates: int = 0
    applied: int = 0

    def _so_change(self, so: dict[str, Any]) -> None:
        self.so_changes.append((so["supplier_order_id"], so["status"], so["delivered"], so["sku"]))
        self.so_final[so["supplier_order_id"]] = dict(so)

    def apply(self, kind: str, ev: dict[str, Any]) -> None:
        sku = ev["sku"]
        ident = (kind, sku, ev["order_id"] if kind == "o" else ev["event_id"])
        if ident in self.seen:
            self.duplicates += 1
            return
        self.seen.add(ident)
        self.applied += 1
        before = self.levels[sku]
        if kind == "o":
            q = ev["quantity"]
            status = "allocated" if before >= q else "backordered"
            back = 0 if status == "allocated" else q - max(before, 0)
            self.levels[sku] = before - q
            self.statuses[ev["order_id"]] = (status, back, self.levels[sku])
        else:
            self.levels[sku] = before + ev["quantity"]
            so = self.open_so.get(sku)
            if ev["reason"] == "delivery" and so is not None:
                so["delivered"] += ev["quantity"]
                done = so["delivered"] >= so["quantity"]
                so["status"] = "completed" if done else "partially_fulfilled"
                self._so_change(so)
                if done:
                    del self.open_so[sku]
        level = self.levels[sku]
        if level < REORDER_POINT and sku not in self.open_so:
            self.so_count[sku] += 1
            so = {
                "supplier_order_id": f"SO-{sku}-{self.so_count[sku]}",
                "sku": sku,
                "quantity": REORDER_TARGET - level,
                "delivered": 0,
                "status": "open",
            }
            self.open_so[sku] = so
            self._so_change(so)


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


def test_sigkill_mid_stream_loses_and_doubles_nothing(worker_factory: Any, kafka: str) -> None:
    initial, stream, restock = make_events(seed=7, skus=300, orders=21_000)
    oracle = Oracle()
    worker: Worker = worker_factory()
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
    stats = worker.wait_for("/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=180)

    assert stats["processed"] == oracle.applied
    assert stats["duplicates"] == oracle.duplicates
    assert stats["dead_lettered"] == 0

    # Every level and every supplier order, over HTTP.
    for sku, level in oracle.levels.items():
        status, body = worker.get(f"/stock/{sku}")
        assert status == 200 and body["level"] == level, (sku, body)
        open_so = oracle.open_so.get(sku)
        got_open = body["open_supplier_order"]
        assert (got_open and got_open["supplier_order_id"]) == (
            open_so and open_so["supplier_order_id"]
        )
    for sku in list(oracle.levels)[:60]:
        _, body = worker.get(f"/supplier-orders/{sku}")
        want = [oracle.so_final[f"SO-{sku}-{n}"] for n in range(oracle.so_count[sku], 0, -1)]
        got = [
            {k: so[k] for k in ("supplier_order_id", "sku", "quantity", "delivered", "status")}
            for so in body["supplier_orders"]
        ]
        assert got == want

    # Exactly one committed order-status per order, each as the oracle says.
    statuses = read_topic(kafka, worker.topic("order-status"), min_count=len(oracle.statuses))
    per_order = Counter(v["order_id"] for _, v in statuses)
    repeated = {k: n for k, n in per_order.items() if n > 1}
    assert not repeated, f"{len(repeated)} orders have more than one order-status"
    assert set(per_order) == set(oracle.statuses)
    for _, v in statuses:
        assert (v["status"], v["backordered_units"], v["level_after"]) == oracle.statuses[
            v["order_id"]
        ], v

    # Supplier-order changes: each exactly once, in order per SKU.
    so_msgs = read_topic(kafka, worker.topic("supplier-orders"), min_count=len(oracle.so_changes))
    got_changes: dict[str, list[Any]] = defaultdict(list)
    for _, v in so_msgs:
        got_changes[v["sku"]].append(
            (v["supplier_order_id"], v["status"], v["delivered"], v["sku"])
        )
    want_changes: dict[str, list[Any]] = defaultdict(list)
    for change in oracle.so_changes:
        want_changes[change[3]].append(change)
    assert got_changes == want_changes

    # One stock-levels message per applied event.
    levels = read_topic(kafka, worker.topic("stock-levels"), min_count=oracle.applied)
    assert len(levels) == oracle.applied

    figures = {
        "events_produced": len(initial) + len(stream) + len(restock),
        "events_applied": oracle.applied,
        "duplicates_in_input": oracle.duplicates,
        "killed_after_processed": [killed_at_b, killed_at_c],
        "order_status_messages": len(statuses),
        "orders_with_more_than_one_status": len(repeated),
        "supplier_order_changes": len(so_msgs),
    }
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "crash-test.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
