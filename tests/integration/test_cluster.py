"""Two workers, one group: any worker answers any request, and one takes over from the other.

The contract: with several workers, any worker answers any request, routing it to the
owner of the key or gathering from all for lists. Each answer names the worker whose
partitions it came from in ``X-Served-By`` (``gathered`` for merged lists), so the test
can tell a forwarded answer from a local one.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from tests.integration.harness import Worker, produce

pytestmark = pytest.mark.integration

SKUS = [f"C-{i:03d}" for i in range(40)]
PARTITIONS = 4  # TOPIC_PARTITIONS of the harness's workers


def owners(worker: Worker) -> dict[int, str]:
    """Partition -> URL of the worker processing it, as ``worker`` sees the group."""
    _, body = worker.get("/cluster")
    return {p: w["url"] for w in body["workers"] for p in w["partitions"]}


def both_assigned(body: Any) -> bool:
    return len(body["workers"]) == 2 and all(w["partitions"] for w in body["workers"])


def all_pages(worker: Worker, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        query = f"/stock/?limit={limit}" + (f"&after={after}" if after else "")
        status, body = worker.get(query)
        assert status == 200, body
        items.extend(body["items"])
        if body["next"] is None:
            return items
        after = body["next"]


def test_any_worker_answers_any_request(worker_factory: Any) -> None:
    w1: Worker = worker_factory()
    w1.start()
    w2: Worker = worker_factory(app_id=w1.app_id)
    w2.start()
    for w in (w1, w2):
        w.wait_for("/cluster", both_assigned, timeout_s=60)
    assert owners(w1) == owners(w2)

    rng = random.Random(7)
    deliveries = [
        {
            "event_id": f"d-{sku}",
            "sku": sku,
            "reason": "delivery",
            "quantity": 30,
            "ts": 1_795_694_400,
        }
        for sku in SKUS
    ]
    orders = [
        {
            "order_id": f"co-{i}",
            "customer_id": "c",
            "sku": rng.choice(SKUS),
            "quantity": rng.randint(1, 4),
            "unit_price": 2.5,
            "ts": 1_795_694_401 + i,
        }
        for i in range(600)
    ]
    produce(w1.bootstrap, w1.topic("stock"), deliveries, key=lambda v: v["sku"])
    # Keys that are not the SKU: ingest on both workers must regroup by SKU.
    produce(w1.bootstrap, w1.topic("orders"), orders, key=lambda v: v["order_id"])
    produce(w1.bootstrap, w1.topic("orders"), [b"{not json", b'{"order_id": 1}'])
    total = len(deliveries) + len(orders)
    for w in (w1, w2):
        # Dead letters are counted from their own topic, a moment after ingest wrote them.
        stats = w.wait_for(
            "/stats",
            lambda b: b["processed"] == total and b["dead_lettered"] >= 2,
            timeout_s=90,
        )
        assert stats["workers"] == 2 and stats["dead_lettered"] == 2
        assert stats["duplicates"] == 0

    expected = Counter({sku: 30 for sku in SKUS})
    for o in orders:
        expected[o["sku"]] -= o["quantity"]
    partition_owner = owners(w1)
    forwarded = 0
    for w in (w1, w2):
        for sku in SKUS:
            owner = partition_owner[partition_of(sku)]
            status, body, headers = w.request(f"/stock/{sku}")
            assert status == 200, body
            assert body["level"] == expected[sku], sku
            assert headers["X-Served-By"] == owner, sku
            forwarded += owner != w.url
            assert w.request(f"/windows/{sku}")[2]["X-Served-By"] == owner
    assert forwarded > 0  # each worker answered some SKUs it does not own

    # Lists gathered from both, identical from either side, paged in SKU order.
    for w in (w1, w2):
        for limit in (7, 1000):
            page = all_pages(w, limit)
            assert [i["sku"] for i in page] == sorted(SKUS)
            assert {i["sku"]: i["level"] for i in page} == dict(expected)
    assert w1.get("/supplier-orders/") == w2.get("/supplier-orders/")
    for sku in SKUS[:10]:
        assert w1.get(f"/supplier-orders/{sku}") == w2.get(f"/supplier-orders/{sku}")
        assert w1.get(f"/windows/{sku}?kind=hopping") == w2.get(f"/windows/{sku}?kind=hopping")
    for o in orders[::37]:
        for w in (w1, w2):
            status, record = w.get(f"/orders/{o['order_id']}")
            assert status == 200, record
            assert (record["sku"], record["quantity"]) == (o["sku"], o["quantity"])
    assert w1.get("/dashboard/windows") == w2.get("/dashboard/windows")
    assert w1.get("/stock/nope")[0] == 404 and w2.get("/orders/nope")[0] == 404
    assert w1.get("/stock/?limit=0")[0] == 400

    # One worker dies: until the group notices, its SKUs get a clear 503, never a 500.
    w2.kill()
    remote = next(s for s in SKUS if partition_owner[partition_of(s)] == w2.url)
    status, body = w1.get(f"/stock/{remote}")
    assert status == 503 and w2.url in body["error"]
    # Then the survivor takes over every partition, rebuilt from the changelogs.
    w1.wait_for("/cluster", lambda b: len(b["workers"]) == 1, timeout_s=60)
    for sku in SKUS:
        body = w1.wait_for(f"/stock/{sku}", lambda b: True, timeout_s=30)
        assert body["level"] == expected[sku], sku
    assert w1.wait_for("/stats", lambda b: b["workers"] == 1)["processed"] == total


def partition_of(sku: str) -> int:
    """Kafka's default partitioner on the SKU, as the contract's co-partitioning implies."""
    return int(murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS
