"""Throughput of the whole pipeline against a bare aiokafka consume-and-parse loop.

Pre-loads N orders over S SKUs into a fresh ``orders`` topic, then measures, on the same
topic in the same run:
  1. bare: one aiokafka consumer reading every message and parsing it with orjson;
  2. pipeline: a real worker (ingest -> join -> tables -> outputs, exactly once) from
     start-up to the moment ``/stats`` reports every order processed; the worker's
     start-up (group join, recovery) is measured separately and not counted.
Prints events/s for both and the ratio. A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/pipeline.py [--events 200000] [--skus 1000] [--bootstrap HOST:PORT]

Without --bootstrap it starts a throwaway broker with scripts/kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import Worker, produce, throwaway_broker  # noqa: E402


def make_orders(n: int, skus: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "order_id": f"b{i}",
                "customer_id": f"c{i % 997}",
                "sku": f"SKU-{i % skus:04d}",
                "quantity": 1 + i % 3,
                "unit_price": 9.99,
                "ts": 1_795_694_400 + i * 0.01,
            }
        )
        for i in range(n)
    ]


async def bare_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:  # the client learns a topic's partitions from a metadata refresh
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for r in records:
                    orjson.loads(r.value)
                seen += sum(len(v) for v in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def cpu_seconds(worker: Worker) -> float:
    """CPU time (user + system) the worker process used so far (Linux; 0 elsewhere)."""
    try:
        assert worker.proc is not None
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AssertionError, IndexError, ValueError):
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--skus", type=int, default=1000)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument(
        "--guarantee", default="exactly_once", choices=["exactly_once", "at_least_once"]
    )
    args = ap.parse_args()

    if args.bootstrap is not None:
        measure(args.bootstrap, args)
    else:
        with throwaway_broker() as bootstrap:
            measure(bootstrap, args)


def measure(bootstrap: str, args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    worker = Worker(
        bootstrap,
        workdir,
        env_extra={"PROCESSING_GUARANTEE": args.guarantee},
    )
    try:
        # Start once to create the topics, stop, load, then measure a cold catch-up.
        worker.start()
        worker.stop()
        orders = make_orders(args.events, args.skus)
        t = time.perf_counter()
        produce(bootstrap, worker.topic("orders"), orders)
        print(
            f"loaded {args.events} orders over {args.skus} SKUs in {time.perf_counter() - t:.1f}s"
        )

        bare_s = asyncio.run(bare_consume(bootstrap, worker.topic("orders"), args.events))

        t = time.perf_counter()
        worker.start()
        startup_s = time.perf_counter() - t
        t = time.perf_counter()
        cpu_before = cpu_seconds(worker)
        worker.wait_for("/stats", lambda b: b["processed"] >= args.events, timeout_s=3600)
        pipeline_s = time.perf_counter() - t
        cpu_s = cpu_seconds(worker) - cpu_before
        bare_rate, pipe_rate = args.events / bare_s, args.events / pipeline_s
        print(f"bare aiokafka + orjson : {bare_rate:10,.0f} events/s ({bare_s:.1f}s)")
        print(
            f"pipeline ({args.guarantee}): {pipe_rate:10,.0f} events/s ({pipeline_s:.1f}s, "
            f"start-up {startup_s:.1f}s not counted)"
        )
        print(f"ratio pipeline/bare    : {pipe_rate / bare_rate:.3f}")
        if cpu_s > 0:
            # On a shared machine events/s moves with the others' load; the worker's own
            # CPU time much less.
            print(
                f"worker CPU time       : {cpu_s:.1f} CPU-s, "
                f"{args.events / cpu_s:,.0f} events per CPU-second"
            )
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
