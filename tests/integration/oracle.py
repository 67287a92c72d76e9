"""The contract's stock semantics as an oracle, and the check of a worker's results
against it (shared by the crash, fault, fuzz and join-order tests).

The oracle is written from the contract alone: it shares no code with the app.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.integration.harness import Worker, read_topic

REORDER_POINT, REORDER_TARGET = 20, 100
HOP_HEADER = "X-Stock-Tracker-Hop"
"""Asks a worker for its own answer only (app/serving/cluster.py): how a diagnosis
tells the workers' counts apart."""


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


def diagnosis(worker: Worker, oracle: Oracle) -> str:
    """What else is off, for the message of a failed check: each worker's own counts, the
    SKUs whose level is wrong, the orders with other statuses than the oracle's."""
    parts = []
    status, body = worker.get("/cluster")
    for url in [w["url"] for w in body["workers"]] if status == 200 else []:
        request = urllib.request.Request(url + "/stats", headers={HOP_HEADER: "test"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                parts.append(f"{url}: {json.loads(r.read())}")
        except OSError as exc:
            parts.append(f"{url}: {exc!r}")
    wrong = {}
    for sku, level in oracle.levels.items():
        status, body = worker.get(f"/stock/{sku}")
        if status != 200 or body["level"] != level:
            wrong[sku] = (level, body)
    parts.append(f"{len(wrong)} levels wrong: {dict(list(wrong.items())[:5])}")
    statuses = read_topic(worker.bootstrap, worker.topic("order-status"), min_count=0)
    per_order = Counter(v["order_id"] for _, v in statuses)
    doubled = [o for o, n in per_order.items() if n > 1]
    parts.append(f"{len(statuses)} order-status messages, {len(doubled)} orders doubled")
    return "; ".join(parts)


def check_results(
    worker: Worker, bootstrap: str, oracle: Oracle, timeout_s: float = 180
) -> dict[str, int]:
    """Every count, level, open supplier order and supplier-order list over HTTP, and
    every output topic, exactly as the oracle says; returns the figures."""
    stats = worker.wait_for(
        "/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=timeout_s
    )
    counts = {"processed": oracle.applied, "duplicates": oracle.duplicates, "dead_lettered": 0}
    if {name: stats[name] for name in counts} != counts:
        raise AssertionError(f"/stats {stats} against {counts}; {diagnosis(worker, oracle)}")
    for sku, level in oracle.levels.items():
        status, body = worker.get(f"/stock/{sku}")
        assert status == 200 and body["level"] == level, (sku, body)
        open_so = oracle.open_so.get(sku)
        got_open = body["open_supplier_order"]
        assert (got_open and got_open["supplier_order_id"]) == (
            open_so and open_so["supplier_order_id"]
        ), sku
    for sku in oracle.levels:
        _, body = worker.get(f"/supplier-orders/{sku}")
        want = [oracle.so_final[f"SO-{sku}-{n}"] for n in range(oracle.so_count[sku], 0, -1)]
        got = [
            {k: so[k] for k in ("supplier_order_id", "sku", "quantity", "delivered", "status")}
            for so in body["supplier_orders"]
        ]
        assert got == want, sku
    statuses = read_topic(bootstrap, worker.topic("order-status"), min_count=len(oracle.statuses))
    per_order = Counter(v["order_id"] for _, v in statuses)
    doubled = sum(1 for n in per_order.values() if n > 1)
    assert doubled == 0, f"{doubled} orders have more than one order-status"
    assert set(per_order) == set(oracle.statuses)
    for _, v in statuses:
        got = (v["status"], v["backordered_units"], v["level_after"])
        assert got == oracle.statuses[v["order_id"]], v
    so_msgs = read_topic(
        bootstrap, worker.topic("supplier-orders"), min_count=len(oracle.so_changes)
    )
    got_changes: dict[str, list[Any]] = defaultdict(list)
    for _, v in so_msgs:
        got_changes[v["sku"]].append(
            (v["supplier_order_id"], v["status"], v["delivered"], v["sku"])
        )
    want_changes: dict[str, list[Any]] = defaultdict(list)
    for change in oracle.so_changes:
        want_changes[change[3]].append(change)
    assert got_changes == want_changes
    levels = read_topic(bootstrap, worker.topic("stock-levels"), min_count=oracle.applied)
    assert len(levels) == oracle.applied
    return {
        "events_applied": oracle.applied,
        "duplicates_in_input": oracle.duplicates,
        "order_status_messages": len(statuses),
        "orders_lost": len(set(oracle.statuses) - set(per_order)),
        "orders_doubled": doubled,
        "supplier_order_changes": len(so_msgs),
        "stock_level_messages": len(levels),
    }
