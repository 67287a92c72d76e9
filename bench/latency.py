"""Live latency: an order produced -> its ``order-status`` record readable (read_committed).

Starts a throwaway broker (or uses --bootstrap) and one worker, then produces orders
(and one stock move per ten orders) at a steady rate with ``ts`` = now, spread over
every input partition, while a read_committed consumer reads ``order-status``. Prints
p50 / p99 / max of (time the status was read - time the order was sent), and, from the
worker's ``/metrics``, how long events waited in the join's event-time merge
(``stock_tracker_merge_wait_seconds``): the latency the merge itself adds live.
A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 30] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import Worker, on_a_broker, running_worker  # noqa: E402


async def run(worker: Worker, bootstrap: str, rate: float, seconds: float) -> list[float]:
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="latest",
        # The reader must not add latency of its own: a read_committed fetch that finds
        # nothing waits up to this long before it asks again (aiokafka's default: 500).
        fetch_max_wait_ms=10,
    )
    await producer.start()
    await consumer.start()
    topic = worker.topic("order-status")
    while not (parts := consumer.partitions_for_topic(topic)):
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    consumer.assign([TopicPartition(topic, p) for p in parts])
    await consumer.seek_to_end()
    n = int(rate * seconds)
    done = asyncio.Event()

    async def read() -> None:
        while len(latencies) < n:
            got = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in got.values():
                for r in records:
                    oid = orjson.loads(r.value)["order_id"]
                    if oid in sent_at:
                        latencies.append(now - sent_at.pop(oid))
            if done.is_set() and not sent_at:
                return

    reader = asyncio.create_task(read())
    start = time.monotonic()
    orders_parts = 4
    for i in range(n):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sku = f"L-{i % 200:03d}"
        now = time.time()
        if i % 10 == 0:
            move = {"event_id": f"lm{i}", "sku": sku, "reason": "delivery", "quantity": 20}
            await producer.send(
                worker.topic("stock"), orjson.dumps({**move, "ts": now}), partition=i % 4
            )
        oid = f"lat-{i}"
        value = {"order_id": oid, "customer_id": "c", "sku": sku, "quantity": 1}
        sent_at[oid] = now
        await producer.send(
            worker.topic("orders"),
            orjson.dumps({**value, "unit_price": 1.5, "ts": now}),
            partition=i % orders_parts,
        )
    await producer.flush()
    done.set()
    try:
        await asyncio.wait_for(reader, timeout=60)
    except TimeoutError:
        print(f"  {len(sent_at)} orders had no status after 60 s", file=sys.stderr)
    await producer.stop()
    await consumer.stop()
    return latencies


def histogram(worker: Worker, name: str, what: str) -> str:
    """One line on a histogram of the worker's /metrics: count, mean, p50 and p99 as the
    upper bounds of their buckets."""
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = [
        (float(le), int(v))
        for le, v in re.findall(name + r'_bucket\{le="([^"]+)"\} (\d+)', text)
        if le != "+Inf"
    ]
    total_m = re.search(name + r"_count (\d+)", text)
    sum_m = re.search(name + r"_sum ([0-9.e+-]+)", text)
    if not total_m or not sum_m or int(total_m.group(1)) == 0:
        return f"{what}: nothing observed"
    total = int(total_m.group(1))
    p99 = next((le for le, v in buckets if v >= 0.99 * total), float("inf"))
    p50 = next((le for le, v in buckets if v >= 0.5 * total), float("inf"))
    return (
        f"{what} ({total}): mean {1000 * float(sum_m.group(1)) / total:.2f} ms, "
        f"p50 <= {1000 * p50:g} ms, p99 <= {1000 * p99:g} ms (histogram buckets)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bootstrap", default=None)
    args = parser.parse_args()

    def bench(bootstrap: str) -> None:
        with running_worker(bootstrap) as worker:
            lat = asyncio.run(run(worker, bootstrap, args.rate, args.seconds))
            if not lat:
                print("no order-status record read")
                return
            lat.sort()
            p = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
            print(
                f"order -> order-status at {args.rate:g} orders/s for {args.seconds:g} s "
                f"(+1 stock move per 10 orders), {len(lat)} orders: "
                f"p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms, max {1000 * lat[-1]:.0f} ms, "
                f"mean {1000 * statistics.fmean(lat):.0f} ms"
            )
            print(
                histogram(
                    worker, "stock_tracker_merge_wait_seconds", "the join's merge: wait per event"
                )
            )
            print(
                histogram(
                    worker,
                    "stock_tracker_batch_latency_seconds",
                    "first hop: input produced -> ingest batch committed",
                )
            )

    on_a_broker(args.bootstrap, bench)


if __name__ == "__main__":
    main()
