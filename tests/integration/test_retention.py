"""ORDER_STATUS_RETENTION_SECONDS on a real worker: an order's status leaves ``/orders/{id}``
once the partition's stream time is that far past the order's ts, stays gone after a
kill -9 and restart (the delete is in the changelog and the store), and the
``order-status`` topic keeps every status.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.harness import Worker, produce, read_topic

pytestmark = pytest.mark.integration

T0 = 1_795_694_400
HOUR = 3_600


def order(order_id: str, ts: float) -> dict[str, Any]:
    # One SKU: one partition, one stream time.
    return {
        "order_id": order_id,
        "customer_id": "c",
        "sku": "RET-1",
        "quantity": 1,
        "unit_price": 1.0,
        "ts": ts,
    }


def status(worker: Worker, order_id: str) -> int:
    return worker.get(f"/orders/{order_id}")[0]


def test_an_order_status_leaves_after_its_retention(kafka: str, worker_factory: Any) -> None:
    worker = worker_factory(ORDER_STATUS_RETENTION_SECONDS=str(HOUR))
    worker.start()
    produce(kafka, worker.topic("orders"), [order("old", T0), order("kept", T0 + HOUR / 2)])
    worker.wait_for("/orders/kept", lambda body: body is not None)
    assert status(worker, "old") == 200
    # Stream time an hour and a bit after "old", half an hour after "kept".
    produce(kafka, worker.topic("orders"), [order("new", T0 + HOUR + 60)])
    worker.wait_for("/orders/new", lambda body: body is not None)
    # Deleted in the transaction that applied "new": gone as soon as "new" is there.
    assert status(worker, "old") == 404
    assert status(worker, "kept") == 200

    worker.kill()
    worker.start()
    assert (status(worker, "old"), status(worker, "kept"), status(worker, "new")) == (
        404,
        200,
        200,
    )
    statuses = read_topic(kafka, worker.topic("order-status"), min_count=3)
    assert sorted(value["order_id"] for _, value in statuses) == ["kept", "new", "old"]
