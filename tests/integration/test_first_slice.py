"""The first slice end to end: stock events in, levels out over HTTP and on stock-levels."""

from __future__ import annotations

import pytest

from tests.integration.harness import Worker, produce, read_topic

pytestmark = pytest.mark.integration


def test_stock_events_move_levels_in_both_time_formats(worker: Worker, kafka: str) -> None:
    produce(
        kafka,
        worker.topic("stock"),
        [
            {
                "event_id": "e1",
                "sku": "SKU-1",
                "reason": "delivery",
                "quantity": 50,
                "supplier_id": "acme",
                "ts": "2026-11-26T12:00:00Z",
            },
            {
                "event_id": "e2",
                "sku": "SKU-1",
                "reason": "adjustment",
                "quantity": -5,
                "ts": 1795694460,
            },
            {
                "event_id": "e3",
                "sku": "SKU-2",
                "reason": "return",
                "quantity": 3,
                "ts": "2026-11-26T13:02:00+01:00",
                "extra": "ignored",
            },
        ],
        # Keyed by SKU, so both SKU-1 events share a partition and arrive in order.
        key=lambda v: v["sku"],
    )
    body = worker.wait_for("/stock/SKU-1", lambda b: b["level"] == 45)
    assert body["sku"] == "SKU-1"
    assert body["updated_at"] == "2026-11-26T12:01:00Z"
    assert body["open_supplier_order"] is None
    assert body["as_of"]["topic"] == worker.topic("stock")
    sku2 = worker.wait_for("/stock/SKU-2", lambda b: b["level"] == 3)
    assert sku2["updated_at"] == "2026-11-26T12:02:00Z"
    # A level of 3 is below the reorder point: a supplier order tops it up to 100.
    assert sku2["open_supplier_order"]["quantity"] == 97

    levels = read_topic(kafka, worker.topic("stock-levels"), min_count=3)
    assert [(k, v["level"]) for k, v in levels if k == b"SKU-1"] == [
        (b"SKU-1", 50),
        (b"SKU-1", 45),
    ]

    status, missing = worker.get("/stock/never-seen")
    assert status == 404 and "error" in missing
    assert worker.get("/health") == (200, {"status": "ok"})
