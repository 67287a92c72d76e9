"""Event-time windows on the real broker: hours of simulated trade replayed in seconds.

The oracle is written from the contract alone. Every order goes to partition 0 of the
``orders`` topic, so each SKU partition sees them in the order written and its stream
time (the largest order ``ts`` seen) is predictable.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from tests.integration.harness import Worker, read_topic
from tests.integration.test_exactly_once import kill_during

pytestmark = pytest.mark.integration

TUMBLING, HOPPING, STEP, GRACE, THRESHOLD, PARTITIONS = 60, 300, 60, 10, 2, 4
T0 = 1_795_694_400  # 2026-11-18T12:00:00Z


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def partition_of(sku: str) -> int:
    return (murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS


def windows_of(ts: float) -> list[tuple[str, int, int]]:
    t = int(ts // 1)
    out = [("tumbling", t - t % TUMBLING, TUMBLING)]
    last = t - t % STEP
    out += [("hopping", s, HOPPING) for s in range(last - HOPPING + STEP, last + STEP, STEP)]
    return out


def oracle(orders: list[dict[str, Any]]) -> dict[str, Any]:
    stream_time: dict[int, float] = {}
    agg: dict[tuple[str, str, int], list[Any]] = {}
    seen: set[tuple[str, str]] = set()
    expedites: set[tuple[str, int]] = set()
    late = 0
    for o in orders:
        if (o["sku"], o["order_id"]) in seen:
            continue
        seen.add((o["sku"], o["order_id"]))
        p = partition_of(o["sku"])
        before = stream_time.get(p, float("-inf"))
        is_late = False
        for kind, start, size in windows_of(o["ts"]):
            if before >= start + size + GRACE:
                is_late = True
                continue
            a = agg.setdefault((o["sku"], kind, start), [0, 0, Decimal(0)])
            a[0] += 1
            a[1] += o["quantity"]
            a[2] += o["quantity"] * Decimal(str(o["unit_price"]))
            if kind == "hopping" and a[0] > THRESHOLD:
                expedites.add((o["sku"], start))
        late += is_late
        stream_time[p] = max(before, o["ts"])
    closed = {}
    for (sku, kind, start), (n, units, revenue) in agg.items():
        size = TUMBLING if kind == "tumbling" else HOPPING
        if stream_time[partition_of(sku)] >= start + size + GRACE:
            cents = revenue.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
            closed[(sku, kind, iso(start), iso(start + size))] = (n, units, float(cents))
    return {"closed": closed, "expedites": expedites, "late": late}


def make_orders(seed: int, n: int, skus: int, hours: float) -> list[dict[str, Any]]:
    """Orders over ``hours`` of event time, a little out of order, some late, some resent."""
    rng = random.Random(seed)
    names = [f"W-{i:03d}" for i in range(skus)]
    orders: list[dict[str, Any]] = []
    for i in range(n):
        ts = T0 + i * hours * 3600 / n
        r = rng.random()
        if r < 0.05:
            ts -= rng.uniform(0, GRACE)  # out of order, within grace
        elif r < 0.07:
            ts -= rng.uniform(TUMBLING + GRACE + 1, HOPPING + GRACE + 60)  # late
        orders.append(
            {
                "order_id": f"w-{i}",
                "customer_id": "c",
                "sku": names[min(int(rng.paretovariate(1.1)) - 1, skus - 1)],
                "quantity": rng.randint(1, 4),
                "unit_price": rng.choice([0.1, 0.125, 1.99, 19.99, 0.135, 5]),
                "ts": round(ts, 3),
            }
        )
        if rng.random() < 0.01:
            orders.append(dict(orders[rng.randrange(len(orders))]))
    return orders


def produce_ordered(kafka: str, topic: str, orders: list[dict[str, Any]]) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
        await producer.start()
        try:
            futures = [
                await producer.send(topic, orjson.dumps(o), key=o["sku"].encode(), partition=0)
                for o in orders
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def results_of(kafka: str, worker: Worker, want: int) -> tuple[dict[Any, Any], Counter[Any]]:
    msgs = read_topic(kafka, worker.topic("window-results"), min_count=want)
    counts: Counter[Any] = Counter()
    got = {}
    for _, v in msgs:
        key = (v["sku"], v["kind"], v["window_start"], v["window_end"])
        counts[key] += 1
        got[key] = (v["orders"], v["units"], v["revenue"])
    return got, counts


def replay(worker: Worker, kafka: str, orders: list[dict[str, Any]], kill: bool) -> dict[str, Any]:
    want = oracle(orders)
    unique = len({(o["sku"], o["order_id"]) for o in orders})
    worker.start()
    started = time.monotonic()
    produce_ordered(kafka, worker.topic("orders"), orders)
    if kill:
        kill_during(worker, unique, 0.5)
        worker.start()
    stats = worker.wait_for("/stats", lambda b: b["processed"] >= unique, timeout_s=240)
    elapsed = time.monotonic() - started
    got, counts = results_of(kafka, worker, len(want["closed"]))
    assert not [k for k, n in counts.items() if n > 1], "a window result was emitted twice"
    assert got == want["closed"]
    expedites = read_topic(kafka, worker.topic("expedites"), min_count=len(want["expedites"]))
    got_expedites = Counter((v["sku"], v["window_start"]) for _, v in expedites)
    assert max(got_expedites.values(), default=1) == 1, "an expedite was emitted twice"
    assert set(got_expedites) == {(sku, iso(start)) for sku, start in want["expedites"]}
    assert stats["late"] == want["late"]
    return {"orders": len(orders), "windows": len(got), "seconds": round(elapsed, 1)}


def test_replay_of_hours_matches_the_oracle(worker_factory: Any, kafka: str) -> None:
    orders = make_orders(seed=11, n=12_000, skus=120, hours=6)
    figures = replay(worker_factory(), kafka, orders, kill=False)
    print(figures)


def test_replay_with_sigkill_gives_the_same_window_results(
    worker_factory: Any, kafka: str
) -> None:
    orders = make_orders(seed=12, n=12_000, skus=120, hours=6)
    figures = replay(worker_factory(), kafka, orders, kill=True)
    print(figures)


def test_window_view_over_http(worker: Worker, kafka: str) -> None:
    orders = [
        {
            "order_id": f"v{i}",
            "customer_id": "c",
            "sku": "V-1",
            "quantity": 1,
            "unit_price": 2.5,
            "ts": T0 + i * 20,
        }
        for i in range(12)
    ]
    produce_ordered(kafka, worker.topic("orders"), orders)
    body = worker.wait_for(
        "/windows/V-1?kind=tumbling", lambda b: sum(w["orders"] for w in b["windows"]) == 12
    )
    assert body["size"] == TUMBLING and body["step"] == TUMBLING
    starts = [w["window_start"] for w in body["windows"]]
    assert starts == sorted(starts)
    assert [w["closed"] for w in body["windows"]] == [True, True, True, False]
    hopping = worker.wait_for("/windows/V-1?kind=hopping", lambda b: len(b["windows"]) > 0)
    assert hopping["step"] == STEP and hopping["size"] == HOPPING
    status, err = worker.get("/windows/V-1?kind=sliding")
    assert status == 400 and "kind" in err["error"]
