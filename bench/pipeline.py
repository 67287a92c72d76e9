"""Throughput of the whole pipeline against a bare loop and the Python ceiling.

Pre-loads N orders over S SKUs into a fresh ``orders`` topic, then measures, on the same
topic in the same run:
  1. bare: one aiokafka consumer reading every message and parsing it with orjson;
  2. ceiling: a hand-written aiokafka + orjson loop doing the pipeline's work without
     exactly once and without Faust, in one process: parse and validate (app/events.py),
     dedupe in a dict, levels, statuses and reorders (app/rules/stock.py), both windows
     (app/rules/windows.py), and every output message (order-status, stock-levels,
     supplier-orders, expedites, window-results) produced with acks=1 to topics of its
     own; no tables, no changelogs, no transactions, no second hop;
  3. pipeline: a real worker (the direct join's reader, or ingest with --join-read
     repartition -> join -> tables -> outputs, exactly once) from
     start-up to the moment ``/stats`` reports every order processed; the worker's
     start-up (group join, recovery) is measured separately and not counted.
Prints events/s for each and the ratios. With --profile S (and py-spy installed), it
also samples the worker with py-spy for S seconds during its run and prints where its
CPU went: by area (the first frame from the leaf that falls in one) and by function.
A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/pipeline.py [--events 200000] [--skus 1000] [--profile 30]
        [--join-read direct|repartition] [--bootstrap HOST:PORT]

Without --bootstrap it starts a throwaway broker with scripts/kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.domain import events as ev  # noqa: E402
from app.domain.models import SkuState  # noqa: E402
from app.domain.rules import stock as rules  # noqa: E402
from app.domain.rules import windows as w  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Worker,
    cpu_seconds,
    create_topics,
    produce,
    throwaway_broker,
)

OUTPUTS = ("order-status", "stock-levels", "supplier-orders", "expedites", "window-results")


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


class Outputs:
    """Output records appended to aiokafka batch builders, partitioned like Kafka's
    default partitioner (murmur2 of the key), one batch per topic and partition."""

    def __init__(self, producer: AIOKafkaProducer, prefix: str, partitions: int) -> None:
        self.producer = producer
        self.prefix = prefix
        self.partitions = partitions
        self.builders: dict[tuple[str, int], Any] = {}
        self.sent: list[Any] = []

    async def emit(self, topic: str, key: bytes | None, value: bytes) -> None:
        topic = self.prefix + topic
        part = (murmur2(key) & 0x7FFFFFFF) % self.partitions if key is not None else 0
        builder = self.builders.get((topic, part))
        if builder is None:
            builder = self.builders[topic, part] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            self.sent.append(await self.producer.send_batch(builder, topic, partition=part))
            builder = self.builders[topic, part] = self.producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)

    async def flush(self) -> None:
        for (topic, part), builder in self.builders.items():
            self.sent.append(await self.producer.send_batch(builder, topic, partition=part))
        self.builders.clear()
        await asyncio.gather(*self.sent)
        self.sent.clear()


async def ceiling_loop(bootstrap: str, topic: str, n: int, prefix: str) -> float:
    """The pipeline's work as one hand-written loop, without exactly once: seconds for n."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await consumer.start()
    await producer.start()
    try:
        tps = await _assign_all(consumer, topic)
        out = Outputs(producer, prefix, 4)
        seen: dict[bytes, float] = {}
        states: dict[str, SkuState] = {}
        specs = (w.tumbling(60), w.hopping(300, 60))
        pw = w.PartitionWindows(specs, 10, 2)
        stream_time = float("-inf")
        dedupe_s, point, target = 86_400, 20, 100
        empty = SkuState(0, 0.0, 0, None)
        dumps, fmt = orjson.dumps, ev.format_ts
        seen_n = 0
        started = time.perf_counter()
        while seen_n < n:
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for r in records:
                    seen_n += 1
                    try:
                        order = ev.parse_order(r.value, now)
                    except ev.InvalidEvent as exc:
                        await out.emit("dead-letters", None, dumps({"error": str(exc)}))
                        continue
                    sku, ts = order.sku, order.ts
                    stream_time = max(stream_time, ts)
                    key = b"%s\x1f%s" % (sku.encode(), order.order_id.encode())
                    first = seen.get(key)
                    if first is not None and first >= stream_time - dedupe_s:
                        continue
                    seen[key] = ts
                    state, status, changes = rules.apply_order(
                        states.get(sku, empty), order, reorder_point=point, reorder_target=target
                    )
                    states[sku] = state
                    skey, ts_text = sku.encode(), fmt(ts)
                    await out.emit(
                        "order-status",
                        order.order_id.encode(),
                        dumps(
                            {
                                "order_id": order.order_id,
                                "sku": sku,
                                "customer_id": order.customer_id,
                                "quantity": order.quantity,
                                "status": status.status,
                                "backordered_units": status.backordered_units,
                                "level_before": status.level_before,
                                "level_after": status.level_after,
                                "ts": ts_text,
                            }
                        ),
                    )
                    await out.emit(
                        "stock-levels",
                        skey,
                        dumps({"sku": sku, "level": state.level, "ts": ts_text}),
                    )
                    for so in changes:
                        await out.emit("supplier-orders", skey, dumps(so.to_dict()))
                    result = pw.apply_order(sku, ts, order.quantity, order.unit_price)
                    open_so = state.open_order.supplier_order_id if state.open_order else None
                    for ex in result.expedites:
                        doc = {
                            "sku": sku,
                            "window_start": fmt(ex.window_start),
                            "window_end": fmt(ex.window_end),
                            "orders": ex.orders,
                            "supplier_order_id": open_so,
                        }
                        await out.emit("expedites", skey, dumps(doc))
            for cw in pw.close_due():
                doc = {
                    "sku": cw.sku,
                    "kind": cw.kind,
                    "window_start": fmt(cw.window_start),
                    "window_end": fmt(cw.window_end),
                    "orders": cw.agg.orders,
                    "units": cw.agg.units,
                    "revenue": w.revenue_out(cw.agg.revenue),
                }
                await out.emit("window-results", cw.sku.encode(), dumps(doc))
            await out.flush()
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()


async def _assign_all(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    while not parts:  # the client learns a topic's partitions from a metadata refresh
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


AREAS = (
    (
        "RocksDB (app/engine/stores.py, rocksdict)",
        ("engine/stores.py", "rocksdict", "faust/stores"),
    ),
    ("transactions and outputs (app/engine/transaction.py)", ("engine/transaction.py",)),
    ("aiokafka producer (batches, send)", ("aiokafka/producer",)),
    ("aiokafka consumer (fetch, decode records)", ("aiokafka/consumer", "aiokafka/record")),
    ("aiokafka client, connections", ("aiokafka/",)),
    (
        "reading: parse, validate, route (agents/direct.py, agents/rows.py, agents/ingest.py, "
        "app/domain/events.py, app/engine/input_reader.py)",
        (
            "agents/direct.py",
            "agents/rows.py",
            "agents/ingest.py",
            "domain/events.py",
            "engine/input_reader.py",
        ),
    ),
    (
        "tracker: join, rules, windows (agents/, app/domain/rules)",
        (
            "agents/tracker.py",
            "agents/processor.py",
            "agents/partition_runtime.py",
            "domain/rules/",
        ),
    ),
    ("batch tap (app/engine/consumer.py)", ("engine/consumer.py", "engine/batch_agents.py")),
    ("HTTP (/stats polling, app/serving)", ("app/serving/", "aiohttp/")),
    ("Faust and mode", ("faust/", "mode/")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:]*)(?::\d+)?\)$")


def profile_worker(pid: int, seconds: int, out: Path) -> None:
    """py-spy samples of ``pid`` for ``seconds`` (raw collapsed stacks in ``out``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "50",
            "-f",
            "raw",
            "--nonblocking",
            "-o",
            str(out),
        ],
        capture_output=True,
        check=False,
    )


def summarise_profile(path: Path, top: int = 15) -> None:
    if not path.exists():
        print("profile: no samples (is py-spy installed and allowed to attach?)")
        return
    areas: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        parsed = [FRAME.match(f) for f in frames]
        files = [m["file"] if m else f for m, f in zip(parsed, frames, strict=True)]
        leaf = parsed[-1]
        leaves[
            f"{leaf['func']} ({leaf['file'].split('site-packages/')[-1]})" if leaf else frames[-1]
        ] += n
        area = "other"
        for file in reversed(files):
            found = next((a for a, keys in AREAS if any(k in file for k in keys)), None)
            if found is not None:
                area = found
                break
        areas[area] += n
    if not total:
        print("profile: no samples")
        return
    print(f"worker CPU by area ({total} py-spy samples, busy threads only):")
    for area, n in areas.most_common():
        print(f"  {100 * n / total:5.1f}%  {area}")
    print(f"top {top} functions by own samples:")
    for func, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {func}")


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
    ap.add_argument("--profile", type=int, default=0, help="py-spy the worker for S seconds")
    ap.add_argument("--join-read", choices=("direct", "repartition"), default="direct")
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
        env_extra={"PROCESSING_GUARANTEE": args.guarantee, "JOIN_READ": args.join_read},
    )
    try:
        # Start once to create the topics, stop, load, then measure a cold catch-up.
        worker.start()
        worker.stop()
        # The ceiling's own output topics, early: their leaders are elected meanwhile.
        prefix = f"ceiling-{workdir.name}."
        create_topics(bootstrap, [prefix + t for t in (*OUTPUTS, "dead-letters")], 4)
        orders = make_orders(args.events, args.skus)
        t = time.perf_counter()
        produce(bootstrap, worker.topic("orders"), orders)
        print(
            f"loaded {args.events} orders over {args.skus} SKUs in {time.perf_counter() - t:.1f}s"
        )

        bare_s = asyncio.run(bare_consume(bootstrap, worker.topic("orders"), args.events))
        ceiling_s = asyncio.run(
            ceiling_loop(bootstrap, worker.topic("orders"), args.events, prefix)
        )

        t = time.perf_counter()
        worker.start()
        startup_s = time.perf_counter() - t
        profile = workdir / "profile.txt"
        spy = None
        if args.profile:
            assert worker.proc is not None
            spy = threading.Thread(
                target=profile_worker, args=(worker.proc.pid, args.profile, profile)
            )
            spy.start()
        t = time.perf_counter()
        cpu_before = cpu_seconds(worker)
        worker.wait_for("/stats", lambda b: b["processed"] >= args.events, timeout_s=3600)
        pipeline_s = time.perf_counter() - t
        cpu_s = cpu_seconds(worker) - cpu_before
        bare_rate, pipe_rate = args.events / bare_s, args.events / pipeline_s
        ceiling_rate = args.events / ceiling_s
        print(f"bare aiokafka + orjson : {bare_rate:10,.0f} events/s ({bare_s:.1f}s)")
        print(
            f"Python ceiling (no EOS): {ceiling_rate:10,.0f} events/s ({ceiling_s:.1f}s; "
            "parse, validate, dedupe, rules, windows, outputs)"
        )
        print(
            f"pipeline ({args.guarantee}): {pipe_rate:10,.0f} events/s ({pipeline_s:.1f}s, "
            f"start-up {startup_s:.1f}s not counted)"
        )
        print(f"ratio pipeline/bare    : {pipe_rate / bare_rate:.3f}")
        print(f"ratio pipeline/ceiling : {pipe_rate / ceiling_rate:.3f}")
        if cpu_s > 0:
            # On a shared machine events/s moves with the others' load; the worker's own
            # CPU time much less.
            print(
                f"worker CPU time       : {cpu_s:.1f} CPU-s, "
                f"{args.events / cpu_s:,.0f} events per CPU-second"
            )
        if spy is not None:
            spy.join()
            summarise_profile(profile)
    finally:
        worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
