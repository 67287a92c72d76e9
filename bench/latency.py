"""Live latency: an order produced -> its ``order-status`` record readable (read_committed).

Starts a throwaway broker (or uses --bootstrap) and one worker (``--join-read direct``,
the default, or ``repartition``), then produces orders (and one stock move per ten
orders) at a steady rate with ``ts`` = now, spread over every input partition, by a
producer that lingers 5 ms as Kafka's Java producer does by default (``--linger-ms``), while a
read_committed consumer reads ``order-status`` (and, in repartition mode, the internal
envelope topic). Prints p50 / p99 / max of (time the status was read - time the order
was sent), whether the target (p99 under 100 ms) was met, and where the time went, per
order, from the Kafka timestamp of the status record (written by the worker as it sends
it) and the time this reader saw it committed. The direct join:

1. produced -> status written: the reader's fetch, the merge, apply, and the wait for
   the partition's commit in flight;
2. status written -> status readable: the commit, until the LSO passes it.

The repartitioned join, with the envelope's timestamps too:

1. produced -> envelope written: ingest's fetch, its queue and parse;
2. envelope written -> envelope readable: ingest's commit, until the LSO passes it;
3. envelope readable -> status written: the tracker's fetch, its queue, the merge, apply;
4. status written -> status readable: the tracker's commit, until the LSO passes it.

"Readable" is when this reader got the record, so its own fetch wait (10 ms at most)
is in 2 and 4. Then, from the worker's ``/metrics``: how long events waited in the
join's event-time merge, a batch waited for its transactional producer, and a
transaction's writes and EndTxn took. The machine's load average and pace (a fixed
Python loop's time) are printed too, and the CPU the broker's JIT compilers used while
orders were counted: on a shared machine the figures move with them, and a fresh
broker compiles for about its first minute (hence the 60 s warm-up by default). A
benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 30] [--warmup 60]
        [--join-read direct|repartition] [--linger-ms 5] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import (  # noqa: E402
    Worker,
    cpu_seconds,
    on_a_broker,
    running_worker,
)

TARGET_P99_MS = 100.0

DIRECT_STAGES = (
    "produced -> status written (reader fetch, merge, apply, commit in flight)",
    "status written -> readable (commit, LSO)",
)
STAGES = (
    "produced -> envelope written (ingest fetch, queue, parse)",
    "envelope written -> readable (ingest commit, LSO)",
    "envelope readable -> status written (tracker fetch, queue, merge, apply)",
    "status written -> readable (tracker commit, LSO)",
)


@dataclass
class Seen:
    """What the reader saw of one order."""

    sent: float
    envelope_written: float | None = None
    envelope_read: float | None = None


async def run(
    worker: Worker,
    bootstrap: str,
    rate: float,
    seconds: float,
    warmup: float = 0.0,
    counting: Callable[[], None] = lambda: None,
) -> tuple[list[float], list[list[float]], list[tuple[float, float]]]:
    """Send the orders and read their statuses; ``counting()`` is called as the first
    counted order is sent."""
    sent_at: dict[str, Seen] = {}
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (seconds into the run when sent, latency)
    stages: list[list[float]] = [[] for _ in STAGES]
    direct: list[list[float]] = [[] for _ in DIRECT_STAGES]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=LINGER_MS)
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
    envelope_topic = f"{worker.app_id}-events-by-sku"
    assigned = []
    # The direct join writes no envelopes: reading their topic would only cost the
    # broker (and this machine's 2 cores) a fetch of 4 more partitions each time.
    repartitioned = worker.env_extra.get("JOIN_READ") == "repartition"
    for name in (topic, envelope_topic) if repartitioned else (topic,):
        while not (parts := consumer.partitions_for_topic(name)):
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        assigned += [TopicPartition(name, p) for p in parts]
    consumer.assign(assigned)
    await consumer.seek_to_end()
    n = int(rate * seconds)
    done = asyncio.Event()

    async def read() -> None:
        while len(latencies) < n:
            got = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for tp, records in got.items():
                if tp.topic == envelope_topic:
                    for r in records:
                        for row in orjson.loads(r.value)["r"]:
                            seen = sent_at.get(row[2]) if row[0] == "o" else None
                            if seen is not None and seen.envelope_read is None:
                                seen.envelope_written = r.timestamp / 1000
                                seen.envelope_read = now
                    continue
                for r in records:
                    oid = orjson.loads(r.value)["order_id"]
                    seen = sent_at.pop(oid, None)
                    if seen is None:
                        continue
                    latencies.append(now - seen.sent)
                    timeline.append((seen.sent - t0, now - seen.sent))
                    written = r.timestamp / 1000
                    direct[0].append(written - seen.sent)
                    direct[1].append(now - written)
                    if seen.envelope_written is not None and seen.envelope_read is not None:
                        env_written, env_read = seen.envelope_written, seen.envelope_read
                        points = (seen.sent, env_written, env_read, r.timestamp / 1000, now)
                        if DUMP is not None:
                            DUMP.append([p - t0 for p in points])
                        for i in range(len(STAGES)):
                            stages[i].append(points[i + 1] - points[i])
            if done.is_set() and not sent_at:
                return

    # Orders of the warm-up (its first ``warmup`` seconds) are sent but not counted.
    warm = int(rate * warmup)
    t0 = time.time() + warmup
    reader = asyncio.create_task(read())
    start = time.monotonic()
    orders_parts = 4
    for i in range(warm + n):
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
        if i == warm:
            counting()
        oid = f"lat-{i}" if i >= warm else f"warm-{i}"
        value = {"order_id": oid, "customer_id": "c", "sku": sku, "quantity": 1}
        if i >= warm:
            sent_at[oid] = Seen(now)
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
    return latencies, stages if stages[0] else direct, timeline


SLICE_S = 5.0

JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""Linux thread names (15 characters) of HotSpot's JIT compilers."""


def broker_pid(bootstrap: str) -> int | None:
    """The pid of the local ``kafka.Kafka`` JVM listening on ``bootstrap``'s port (its
    properties file, the last argument, names the port), or None (not local, not Linux)."""
    port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"kafka.Kafka" not in args:
                continue
            props = Path(args[args.index(b"kafka.Kafka") + 1].decode())
            if re.search(rf"^listeners=.*:{port}\b", props.read_text(), re.M):
                return int(proc.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


def jit_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds the JVM's JIT compiler threads have used so far."""
    if pid is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            if (task / "comm").read_text().strip() in JIT_THREADS:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK")


def machine_pace_ms() -> float:
    """The best of three timings of a fixed pure-Python loop: on a shared machine the
    same code runs at different speeds at different hours, and so do these figures."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(range(5_000_000))
        best = min(best, time.perf_counter() - started)
    return 1000 * best


DUMP: list[list[float]] | None = None
"""With --dump: per order, its five moments (seconds into the run), for a closer look."""
LINGER_MS = 5
"""The order producer's linger (--linger-ms)."""


def over_time(timeline: list[tuple[float, float]]) -> str:
    """p99 and max per SLICE_S seconds of sending, and when the slowest 1% were sent:
    tells a start-up transient from spikes spread over the run."""
    if not timeline:
        return "over time: nothing"
    slices: dict[int, list[float]] = {}
    for sent, latency in timeline:
        slices.setdefault(int(sent // SLICE_S), []).append(latency)
    parts = []
    for i in sorted(slices):
        values = sorted(slices[i])
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        parts.append(f"{i * SLICE_S:g}s: {1000 * p99:.0f}/{1000 * values[-1]:.0f}")
    slowest = sorted(timeline, key=lambda t: t[1])[int(0.99 * len(timeline)) :]
    first = [sent for sent, _ in slowest if sent < SLICE_S]
    return (
        f"over time (p99/max ms per {SLICE_S:g} s of sending): {', '.join(parts)}; "
        f"of the slowest 1% ({len(slowest)}), {len(first)} were sent in the first "
        f"{SLICE_S:g} s"
    )


def percentiles(values: list[float]) -> str:
    values = sorted(values)

    def p(q: float) -> float:
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]

    return (
        f"mean {1000 * statistics.fmean(values):6.1f}, p50 {p(0.5):6.1f}, "
        f"p99 {p(0.99):6.1f}, max {1000 * values[-1]:6.1f} ms"
    )


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
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="send orders for this many seconds first, not counted: the worker's start-up "
        "and the broker's: a fresh broker's JIT compilers used about 16 CPU-s of this "
        "machine's 2 cores in its first 40 s, 2 in the next 20 and next to none after "
        "(printed for the counted part)",
    )
    parser.add_argument("--dump", default=None, help="write every order's moments (JSON)")
    parser.add_argument("--join-read", choices=("direct", "repartition"), default="direct")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=5,
        help="the order producer's linger: 5 as Kafka 4's Java producer by default (KIP-1030). "
        "An order's time counts from its send() call, so the linger is part of its latency; "
        "a smaller one sends a request per order or two, which costs the broker CPU that "
        "this machine's 2 cores share with the worker (1: the figures before)",
    )
    args = parser.parse_args()
    global DUMP, LINGER_MS
    DUMP = [] if args.dump else None
    LINGER_MS = args.linger_ms

    def bench(bootstrap: str) -> None:
        pace_ms = machine_pace_ms()
        broker = broker_pid(bootstrap)
        jit_at: list[float | None] = []
        with running_worker(bootstrap, JOIN_READ=args.join_read) as worker:
            load_before = os.getloadavg()[0]
            cpu_before, wall_before = cpu_seconds(worker), time.monotonic()
            lat, stages, timeline = asyncio.run(
                run(
                    worker,
                    bootstrap,
                    args.rate,
                    args.seconds,
                    args.warmup,
                    lambda: jit_at.append(jit_cpu_seconds(broker)),
                )
            )
            cpu_used, wall = cpu_seconds(worker) - cpu_before, time.monotonic() - wall_before
            load_after = os.getloadavg()[0]
            jit_at.append(jit_cpu_seconds(broker))
            if not lat:
                print("no order-status record read")
                return
            lat.sort()

            def p(q: float) -> float:
                return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]

            print(
                f"order -> order-status ({args.join_read} join) at {args.rate:g} orders/s "
                f"for {args.seconds:g} s "
                f"(after {args.warmup:g} s not counted; producer linger {LINGER_MS} ms) "
                f"(+1 stock move per 10 orders), {len(lat)} orders: "
                f"p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms, max {1000 * lat[-1]:.0f} ms, "
                f"mean {1000 * statistics.fmean(lat):.0f} ms"
            )
            met = "met" if p(0.99) < TARGET_P99_MS else "NOT met"
            print(
                f"target p99 < {TARGET_P99_MS:g} ms: {met} "
                f"(load average {load_before:.1f} before, {load_after:.1f} after, "
                f"{os.cpu_count()} CPUs); the worker used {cpu_used:.1f} CPU-s in {wall:.1f} s"
            )
            print(over_time(timeline))
            jit = (
                f"the broker's JIT compilers used {jit_at[1] - jit_at[0]:.1f} CPU-s while "
                f"orders were counted ({jit_at[1]:.1f} since it started)"
                if len(jit_at) == 2 and jit_at[0] is not None and jit_at[1] is not None
                else "the broker's JIT: not known (not a local broker)"
            )
            print(f"{jit}; machine pace: a fixed Python loop took {pace_ms:.0f} ms")
            if stages[0]:
                print(f"per stage, over {len(stages[0])} orders:")
                names = STAGES if len(stages) == len(STAGES) else DIRECT_STAGES
                for name, values in zip(names, stages, strict=True):
                    print(f"  {name}: {percentiles(values)}")
            for name, what in (
                ("stock_tracker_merge_wait_seconds", "the join's merge: wait per event"),
                (
                    "stock_tracker_batch_latency_seconds",
                    "input produced -> its batch committed (direct), or ingest's (repartition)",
                ),
                ("stock_tracker_producer_wait_seconds", "a batch waiting for its producer"),
                ("stock_tracker_commit_write_seconds", "a transaction's writes and offsets"),
                ("stock_tracker_commit_end_seconds", "a transaction's EndTxn"),
            ):
                print(histogram(worker, name, what))

    on_a_broker(args.bootstrap, bench)
    if args.dump and DUMP is not None:
        Path(args.dump).write_bytes(orjson.dumps(DUMP))


if __name__ == "__main__":
    main()
