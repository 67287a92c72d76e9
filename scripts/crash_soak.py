"""Crash soak: SIGKILL a worker mid-stream many times and check it always recovers exactly.

Each run starts a fresh worker (its own app id, topics and data dir) on one shared
broker, produces N valid orders over ~300 SKUs keyed by SKU, SIGKILLs the worker once
``/stats`` shows a random fraction of them processed, restarts it and waits until
``processed == N`` exactly (never more, no duplicates, nothing dead-lettered).

A run is PASS when that holds, STALL when ``processed`` stays below N until the
timeout while the worker is alive, FAIL otherwise (over-count, duplicates, dead
letters, a dead worker, an error). Every non-PASS run prints diagnostics: the app's
consumer-group committed offsets against each partition's high watermark and
last-stable offset, the orders expected vs found per ``<app_id>-events-by-sku``
partition, and the tail of the restarted worker's log (whose path is kept).

Usage (from the repo root):

    .venv/bin/python scripts/crash_soak.py [--runs 30] [--orders 20000] [--kill-at 0.4]
        [--kill-spread 0.3] [--seed 1] [--timeout 120] [--bootstrap HOST:PORT]

Without ``--bootstrap`` one throwaway broker is started with ``scripts/kafka`` on free
ports and a temp data dir, and stopped at the end. Exits non-zero if any run did not pass.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import Worker, produce, throwaway_broker  # noqa: E402

PARTITIONS = 4  # the harness runs workers with TOPIC_PARTITIONS=4
SKUS = 300
POLL_S = 0.05


@dataclass
class Outcome:
    """What one run saw."""

    run: int
    kill_at: float
    verdict: str = "FAIL"
    killed_after: int = -1
    recovery_s: float | None = None
    stats: Any = None
    max_processed: int = 0
    reason: str = ""
    workdir: Path | None = None
    log_path: Path | None = None
    diagnostics: list[str] = field(default_factory=list)


@contextmanager
def broker(given: str | None) -> Iterator[str]:
    """The given bootstrap address, or a throwaway broker started by scripts/kafka."""
    if given:
        yield given
        return
    with throwaway_broker() as bootstrap:
        yield bootstrap


def sku_partition(sku: str) -> int:
    """Kafka's default partitioner on the UTF-8 SKU, as app.topics.sku_partition."""
    return int(murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS


def make_orders(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """N valid orders (per the contract) over SKUS SKUs, event times strictly rising."""
    t0 = float(int(time.time()))
    names = [f"SKU-{i:04d}" for i in range(SKUS)]
    return [
        {
            "order_id": f"ord-{i}",
            "customer_id": f"c{rng.randint(1, 500)}",
            "sku": rng.choice(names),
            "quantity": rng.randint(1, 5),
            "unit_price": round(rng.uniform(1, 50), 2),
            "ts": t0 + i * 0.01,
        }
        for i in range(n)
    ]


class Poller:
    """Reads /stats and remembers the highest ``processed`` it ever saw."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.max_processed = 0
        self.last: Any = None
        self.changed_at = time.monotonic()  # when ``processed`` last changed

    def poll(self) -> Any:
        status, body = self.worker.get("/stats")
        if status == 200 and isinstance(body, dict):
            if self.last is None or self.last.get("processed") != body.get("processed"):
                self.changed_at = time.monotonic()
            self.last = body
            self.max_processed = max(self.max_processed, int(body.get("processed", 0)))
            return body
        return None


async def _offsets(bootstrap: str, app_id: str, sku_topic: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(app_id)
    finally:
        await admin.close()
    tps = set(committed)
    tps.update(TopicPartition(sku_topic, p) for p in range(PARTITIONS))
    ordered = sorted(tps, key=lambda tp: (tp.topic, tp.partition))
    ends: dict[str, dict[TopicPartition, int]] = {}
    for isolation in ("read_uncommitted", "read_committed"):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
        await consumer.start()
        try:
            ends[isolation] = await consumer.end_offsets(ordered)
        finally:
            await consumer.stop()
    lines = [
        f"  consumer group {app_id!r}: committed vs end (HW = high watermark, "
        "LSO = last stable offset, lag = LSO - committed)"
    ]
    for tp in ordered:
        meta = committed.get(tp)
        c = meta.offset if meta is not None else None
        hw = ends["read_uncommitted"].get(tp)
        lso = ends["read_committed"].get(tp)
        lag = "-" if c is None or lso is None else str(lso - c)
        lines.append(f"    {tp.topic}[{tp.partition}]: committed={c} HW={hw} LSO={lso} lag={lag}")
    return lines


async def _sku_topic_contents(bootstrap: str, sku_topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of the SKU topic: (order rows, distinct order ids), read_committed."""
    rows: Counter[int] = Counter()
    ids: dict[int, set[str]] = {p: set() for p in range(PARTITIONS)}
    for r in await _read_all(bootstrap, sku_topic):
        for row in orjson.loads(r.value):
            if row and row[0] == "o":
                rows[r.partition] += 1
                ids[r.partition].add(str(row[2]))
    return {p: (rows[p], len(ids[p])) for p in range(PARTITIONS)}


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), all partitions."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def _tracker_view(bootstrap: str, worker: Worker) -> list[str]:
    """What the tracker committed: per-partition counters and watermarks, order-status."""
    lines = ["  tracker's committed view (partition-state changelog, last record per partition):"]
    last: dict[int, Any] = {}
    for r in await _read_all(bootstrap, f"{worker.app_id}-partition-state-changelog"):
        if r.value:
            last[r.partition] = orjson.loads(r.value)
    total = 0
    for p in range(PARTITIONS):
        doc = last.get(p, {})
        orders = int(doc.get("counters", {}).get("orders", 0))
        total += orders
        lines.append(f"    [{p}]: orders={orders} watermarks={doc.get('watermarks')}")
    statuses = await _read_all(bootstrap, worker.topic("order-status"))
    distinct = len({orjson.loads(r.value)["order_id"] for r in statuses})
    lines.append(
        f"    sum of committed counters={total}; order-status messages={len(statuses)} "
        f"(distinct orders {distinct})"
    )
    return lines


def diagnostics(bootstrap: str, worker: Worker, orders: list[dict[str, Any]]) -> list[str]:
    sku_topic = f"{worker.app_id}-events-by-sku"
    lines: list[str] = []
    try:
        lines += asyncio.run(_offsets(bootstrap, worker.app_id, sku_topic))
    except Exception as exc:
        lines.append(f"  (offsets unavailable: {exc!r})")
    expected = Counter(sku_partition(o["sku"]) for o in orders)
    try:
        found = asyncio.run(_sku_topic_contents(bootstrap, sku_topic))
        lines.append(f"  {sku_topic}: orders expected vs committed rows (distinct ids)")
        for p in range(PARTITIONS):
            rows, distinct = found[p]
            lines.append(f"    [{p}]: expected={expected[p]} rows={rows} distinct={distinct}")
    except Exception as exc:
        lines.append(f"  (SKU topic unreadable: {exc!r})")
    try:
        lines += asyncio.run(_tracker_view(bootstrap, worker))
    except Exception as exc:
        lines.append(f"  (tracker view unavailable: {exc!r})")
    status, body = worker.get("/stats")
    lines.append(f"  /stats now: {status} {body}")
    lines.append(f"  worker log: {worker.log_path}")
    lines.append(f"  first-start log: {worker.workdir / 'worker-1.log'}")
    lines.append("  ---- last 60 lines of the restarted worker's log ----")
    lines += ["  | " + line for line in worker.tail(60).splitlines()]
    return lines


def one_run(
    run: int,
    kill_at: float,
    bootstrap: str,
    root: Path,
    orders: list[dict[str, Any]],
    timeout: float,
) -> Outcome:
    n = len(orders)
    out = Outcome(run=run, kill_at=kill_at)
    worker = Worker(bootstrap, root / f"run-{run:02d}")
    out.workdir = worker.workdir
    poller = Poller(worker)
    try:
        worker.start()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                produce(bootstrap, worker.topic("orders"), orders, key=lambda o: o["sku"])
            except BaseException as exc:
                errors.append(exc)

        producer = threading.Thread(target=send, daemon=True)
        producer.start()
        goal = int(kill_at * n)
        deadline = time.monotonic() + timeout
        while True:
            body = poller.poll()
            if body is not None and body["processed"] >= goal:
                break
            if time.monotonic() > deadline:
                out.reason = f"never reached the kill point {goal}: {poller.last}"
                return out
            time.sleep(POLL_S)
        worker.kill()
        out.killed_after = int(body["processed"])
        producer.join(120)
        if errors:
            out.reason = f"produce failed: {errors[0]!r}"
            return out

        poller.last = None  # from here on: only what the restarted worker says
        restarted = time.monotonic()
        worker.start(wait=False)  # a worker that never answers within the timeout stalls
        deadline = restarted + timeout
        while time.monotonic() < deadline:
            body = poller.poll()
            if body is not None and body["processed"] >= n:
                out.recovery_s = time.monotonic() - restarted
                break
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                out.reason = f"worker exited with {worker.proc.returncode}"
                break
            time.sleep(POLL_S)
        if out.recovery_s is not None:
            time.sleep(3)  # settle: nothing more must arrive
            poller.poll()
        out.stats = poller.last
        out.max_processed = poller.max_processed
        stats = out.stats or {}
        if out.max_processed > n:
            out.reason = f"processed went over N: max {out.max_processed} > {n}"
        elif out.recovery_s is None and not out.reason:
            out.verdict = "STALL"
            out.reason = f"processed {stats.get('processed')} < {n} {timeout:.0f}s after restart"
            if poller.last is None:
                out.reason += " (the restarted worker never answered /stats)"
            else:
                idle = time.monotonic() - poller.changed_at
                out.reason += f", no progress for the last {idle:.0f}s"
        elif out.reason:
            pass
        elif stats.get("processed") != n:
            out.reason = f"processed {stats.get('processed')} != {n}"
        elif stats.get("duplicates") != 0:
            out.reason = f"duplicates {stats.get('duplicates')} != 0"
        elif stats.get("dead_lettered") != 0:
            out.reason = f"dead_lettered {stats.get('dead_lettered')} != 0"
        else:
            out.verdict = "PASS"
        return out
    except Exception as exc:
        out.reason = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        out.stats = poller.last
        return out
    finally:
        out.log_path = worker.log_path
        if out.verdict != "PASS":
            out.diagnostics = diagnostics(bootstrap, worker, orders)
        worker.stop()
        if out.verdict == "PASS":
            shutil.rmtree(worker.workdir / "data", ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--kill-at", type=float, default=0.4, help="mean kill point (0..1)")
    parser.add_argument(
        "--kill-spread", type=float, default=0.3, help="kill point uniform in mean +/- this"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--workdir", type=Path, help="where run dirs go [a new temp dir]")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="crash-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    lo = max(0.05, args.kill_at - args.kill_spread)
    hi = min(0.95, args.kill_at + args.kill_spread)
    print(
        f"crash soak: {args.runs} runs x {args.orders} orders over {SKUS} SKUs, "
        f"kill point in [{lo:.2f}, {hi:.2f}], seed {args.seed}, run dirs in {root}",
        flush=True,
    )
    outcomes: list[Outcome] = []
    with broker(args.bootstrap) as bootstrap:
        print(f"broker: {bootstrap}", flush=True)
        for run in range(1, args.runs + 1):
            kill_at = rng.uniform(lo, hi)
            orders = make_orders(rng, args.orders)
            started = time.monotonic()
            o = one_run(run, kill_at, bootstrap, root, orders, args.timeout)
            outcomes.append(o)
            rec = "-" if o.recovery_s is None else f"{o.recovery_s:.1f}s"
            print(
                f"run {run:2d}: kill at {o.kill_at:.2f} (processed {o.killed_after}), "
                f"recovered in {rec}, stats {o.stats}, {o.verdict}"
                + (f" ({o.reason})" if o.reason else "")
                + f" [{time.monotonic() - started:.0f}s, log {o.log_path}]",
                flush=True,
            )
            for line in o.diagnostics:
                print(line, flush=True)

    passed = sum(o.verdict == "PASS" for o in outcomes)
    stalled = sum(o.verdict == "STALL" for o in outcomes)
    failed = len(outcomes) - passed - stalled
    times = [o.recovery_s for o in outcomes if o.recovery_s is not None]
    if times:
        print(
            f"recovery seconds: min {min(times):.1f}, median {statistics.median(times):.1f}, "
            f"max {max(times):.1f}"
        )
    print(f"{len(outcomes)} runs: {passed} passed, {stalled} stalled, {failed} failed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
