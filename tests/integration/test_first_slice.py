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
    so = sku2["open_supplier_order"]
    assert so["quantity"] == 97
    # Times in answers are ISO-8601 UTC strings, never the stored epoch seconds.
    assert "created_ts" not in so
    assert so["created_at"] == so["ts"] == "2026-11-26T12:02:00Z"
    assert all(not isinstance(v, float) for v in so.values()), so
    status, listed = worker.get("/supplier-orders/")
    assert status == 200 and listed["supplier_orders"] == [so]

    levels = read_topic(kafka, worker.topic("stock-levels"), min_count=3)
    assert [(k, v["level"]) for k, v in levels if k == b"SKU-1"] == [
        (b"SKU-1", 50),
        (b"SKU-1", 45),
    ]

    status, missing = worker.get("/stock/never-seen")
    assert status == 404 and "error" in missing
    # Every keyed read answers 404 for a SKU no event named, windows too.
    for path in ("/windows/never-seen", "/windows/never-seen?kind=hopping"):
        assert worker.get(path) == (404, {"error": "unknown sku: never-seen"}), path
    status, held = worker.get("/windows/SKU-1")  # seen (stock only): no windows yet
    assert status == 200 and held["windows"] == []
    assert worker.get("/health") == (200, {"status": "ok"})


def test_errors_do_not_echo_long_inputs(worker: Worker) -> None:
    long = "x" * 5000
    for path, status in (
        (f"/stock/{long}", 400),
        (f"/windows/{long}", 400),
        (f"/orders/{long}", 400),
        (f"/nothing-here/{long}", 404),
        (f"/windows/SKU-1?kind={long}", 400),
        (f"/stock/?limit={long}", 400),
        (f"/static/{long}", 404),
    ):
        got, body = worker.get(path)
        assert got == status, (path[:40], got, body)
        assert set(body) == {"error"}
        message = body["error"]
        assert len(message) < 200, (path[:40], len(message))
        assert "x" * 100 not in message
    # A long input is cut where it is repeated, and says how long it was.
    _, body = worker.get(f"/stock/{long}")
    assert body["error"].startswith("sku must be 1-64 characters: GET /stock/xxx")
    assert "(5007 characters)" in body["error"]
