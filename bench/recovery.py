"""Recovery: kill -9 a loaded worker, restart it, and time the way back.

Starts a throwaway broker (or uses --bootstrap) and one worker, writes one delivery and
one order for each of --skus SKUs, waits until all are processed, then SIGKILLs the
worker and starts it again. Prints:
  - restart -> ready (``/health`` 200, every partition restored) in seconds;
  - restart -> a new order's status readable over HTTP;
  - the steps of that (from the worker's log): process start until it asks to join the
    group, the join, the restore of the tables, until ready, until the order is visible.
    With --membership static (the default) the worker has a WORKER_INSTANCE_ID, so the
    restart does not wait out the killed member's session timeout;
  - the restore rate: changelog records per second, from the worker's own log lines
    ("Partition N restored from R changelog records in S s"), summed over partitions
    (they restore concurrently, so records / the longest partition's time).
Then (:func:`failover_and_rates`) two workers in one group load the same volume; one is
SIGKILLed and the other, which held its partitions as warm standbys
(TABLE_STANDBY_REPLICAS=1), takes them over. Prints:
  - kill -9 -> the survivor has restored the last taken-over partition (from its log),
    next to the failure-detection time (the group's session timeout);
  - kill -9 -> a sample of the dead worker's SKUs all answered correctly by the
    survivor; then every SKU of the dead worker's partitions is checked once;
  - the changelog records those restores replayed (a tail: the standby was warm);
  - restore records/s of a restart that reuses local state (SIGTERM, start) and of a
    full rebuild (SIGTERM, DATA_DIR removed, start), on the survivor, now holding all.
A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/recovery.py [--skus 100000] [--bootstrap HOST:PORT]
        [--part all|restart|failover] [--membership static|dynamic]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.partitioner import murmur2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.domain.settings import Settings  # noqa: E402
from tests.integration.harness import Worker, on_a_broker, produce, running_worker  # noqa: E402

T0 = 1_795_694_400
POLL_S = 0.02
"""How often the worker's HTTP answers are polled while timing the restart."""
RESTORED = re.compile(r"restored from (\d+) changelog records in ([0-9.]+) s")


def restore_figures(log: str) -> tuple[int, float]:
    found = [(int(n), float(s)) for n, s in RESTORED.findall(log)]
    return sum(n for n, _ in found), max((s for _, s in found), default=0.0)


PARTITIONS = 4  # TOPIC_PARTITIONS of the harness's workers
RESTORED_AT = re.compile(
    r"^\[([0-9-]+ [0-9:]+),(\d+)\] .*Partition (\d+) restored from (\d+) changelog records "
    r"in ([0-9.]+) s \((.*)\)(?:, then its in-memory state set up in ([0-9.]+) s)?",
    re.M,
)
SESSION_TIMEOUT_S = 10.0
"""app/main.py's broker_session_timeout, unless Settings has FAILURE_DETECTION_SECONDS."""


def failure_detection_s() -> float:
    return float(getattr(Settings(), "failure_detection_seconds", SESSION_TIMEOUT_S))


def load(bootstrap: str, worker: Worker, n: int) -> None:
    """One delivery of 50 and one order of 1 per SKU: every level ends at 49."""
    produce(
        bootstrap,
        worker.topic("stock"),
        (
            {
                "event_id": f"d{i}",
                "sku": f"R-{i:06d}",
                "reason": "delivery",
                "quantity": 50,
                "ts": T0 + i * 0.001,
            }
            for i in range(n)
        ),
    )
    produce(
        bootstrap,
        worker.topic("orders"),
        (
            {
                "order_id": f"o{i}",
                "customer_id": "c",
                "sku": f"R-{i:06d}",
                "quantity": 1,
                "unit_price": 2.5,
                "ts": T0 + n * 0.001 + i * 0.001,
            }
            for i in range(n)
        ),
    )


def partition_of(sku: str) -> int:
    return int(murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS


def levels(url: str, skus: list[str], concurrency: int = 16) -> dict[str, Any]:
    """``GET /stock/{sku}`` of each SKU: its level, or the HTTP status if not 200."""

    async def run() -> dict[str, Any]:
        found: dict[str, Any] = {}
        queue = list(skus)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one() -> None:
                while queue:
                    sku = queue.pop()
                    try:
                        async with session.get(f"{url}/stock/{sku}") as r:
                            found[sku] = (await r.json())["level"] if r.status == 200 else r.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        found[sku] = repr(exc)

            await asyncio.gather(*(one() for _ in range(concurrency)))
        return found

    return asyncio.run(run())


Restore = tuple[float, int, int, float, str, float]


def restores_since(log: str, since: float) -> list[Restore]:
    """(wall time, partition, records, seconds, how, seconds to set up the in-memory
    state afterwards) of each restore line logged after ``since``."""
    found = []
    for day, ms, partition, n, took, how, setup in RESTORED_AT.findall(log):
        at = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp() + int(ms) / 1000
        if at >= since:
            found.append((at, int(partition), int(n), float(took), how, float(setup or 0)))
    return found


def rate_line(what: str, found: list[Restore]) -> str:
    tracker = [f for f in found if "of 6 tables" in f[4] or "sku-state" in f[4]]
    records = sum(f[2] for f in tracker)
    longest = max((f[3] for f in tracker), default=0.0)
    rate = records / longest if longest else float("nan")
    how = sorted({f[4] for f in tracker})
    return (
        f"{what}: {records:,} changelog records, longest partition {longest:.2f} s -> "
        f"{rate:,.0f} records/s ({'; '.join(how)}); in-memory state set up in "
        f"{sum(f[5] for f in tracker):.2f} s over all partitions, one after the other"
    )


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")

RESTART_STEPS = (
    ("join requested", "(Re-)joining group"),
    ("group synced", "Successfully synced group"),
    ("restore begun", "Restoring partition"),
)
"""Log lines that mark the steps of a restart (the first of each), in order."""


def log_times(log: str) -> dict[str, float]:
    """Wall-clock times (epoch seconds) of the restart's steps in a worker log: the first
    line, the first line of each of RESTART_STEPS, and the last "restored from" line."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        m = STAMP.match(line)
        if m is None:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.setdefault("first log line", at)
        for name, marker in RESTART_STEPS:
            if marker in line:
                found.setdefault(name, at)
        if "restored from" in line:
            found["restore done"] = at
    return found


def restart_parts(log: str, spawned: float, ready: float, produced: float, visible: float) -> str:
    """The way back after a kill -9, step by step (wall clock, from the worker's log):
    process start (interpreter, imports, the app, Faust's services) until it asks to
    join the group; the join; the restore of the tables; the rest until ``/health``
    says ok; the new order written (by a new producer); then until its status is
    readable."""
    t = log_times(log)
    marks = [("spawned", spawned)]
    marks += [(n, t[n]) for n in ("join requested", "group synced") if n in t]
    if "restore done" in t:
        marks.append(("restore done", t["restore done"]))
    marks += [("ready", ready), ("new order written", produced), ("its status read", visible)]
    parts = [f"{b[0]} +{b[1] - a[1]:.1f} s" for a, b in pairwise(marks)]
    return "; ".join(parts)


def failover_and_rates(bootstrap: str, n: int, keep_log: Path | None = None) -> None:
    """Two workers, ``n`` SKUs; kill -9 one; the survivor's takeover; then restore rates."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TABLE_STANDBY_REPLICAS": "1"}
        survivor = Worker(bootstrap, Path(tmp) / "a", env_extra=env)
        victim = Worker(bootstrap, Path(tmp) / "b", env_extra=env, app_id=survivor.app_id)
        try:
            survivor.start()
            victim.start()
            survivor.wait_for(
                "/cluster",
                lambda b: len(b["workers"]) == 2 and all(w["partitions"] for w in b["workers"]),
                timeout_s=120,
            )
            load(bootstrap, survivor, n)
            survivor.wait_for("/stats", lambda b: b["processed"] >= 2 * n, timeout_s=3600)
            _, cluster = survivor.get("/cluster")
            taken = {
                p for w in cluster["workers"] if w["url"] == victim.url for p in w["partitions"]
            }
            skus = [f"R-{i:06d}" for i in range(n) if partition_of(f"R-{i:06d}") in taken]
            sample = random.Random(1).sample(skus, min(500, len(skus)))
            print(
                f"loaded: {2 * n:,} events over {n:,} SKUs on two workers; the victim "
                f"processes partitions {sorted(taken)} ({len(skus):,} SKUs)"
            )
            killed_at = time.time()
            victim.kill()
            while True:
                got = levels(survivor.url, sample)
                if all(v == 49 for v in got.values()):
                    break
                time.sleep(0.1)
            sample_s = time.time() - killed_at
            assert survivor.log_path is not None
            if keep_log is not None:
                shutil.copyfile(survivor.log_path, keep_log)
            found = [
                f
                for f in restores_since(survivor.log_path.read_text(errors="replace"), killed_at)
                if f[1] in taken and ("of 6 tables" in f[4] or "sku-state" in f[4])
            ]
            restored_s = max((f[0] for f in found), default=float("nan")) - killed_at
            replayed = sum(f[2] for f in found)
            print(
                f"failover (kill -9 of one of two workers, {len(skus):,} SKUs taken over): "
                f"failure detection {failure_detection_s():.1f} s; last taken-over partition "
                f"restored after {restored_s:.1f} s; a sample of {len(sample)} of its SKUs "
                f"all answered correctly after {sample_s:.1f} s"
            )
            print(
                f"  the takeover replayed {replayed:,} changelog records "
                f"({'; '.join(sorted({f[4] for f in found}))}); restores took "
                f"{max((f[3] for f in found), default=0):.2f} s at most, setting up the "
                f"in-memory state {sum(f[5] for f in found):.2f} s (blocking, one by one)"
            )
            everything = levels(survivor.url, skus)
            wrong = {k: v for k, v in everything.items() if v != 49}
            print(
                f"  then every SKU of the taken-over partitions checked once: "
                f"{len(skus) - len(wrong):,} of {len(skus):,} correct"
                + (f" (e.g. {sorted(wrong.items())[:3]})" if wrong else "")
            )

            # Restore rates on the survivor, which now holds every partition.
            survivor.stop()
            since = time.time()
            survivor.start(timeout_s=600)
            print(
                rate_line(
                    "restart reusing local state (SIGTERM, start)",
                    restores_since(survivor.log_path.read_text(errors="replace"), since),
                )
            )
            survivor.stop()
            shutil.rmtree(survivor.workdir / "data")
            since = time.time()
            survivor.start(timeout_s=600)
            print(
                rate_line(
                    "full rebuild (SIGTERM, DATA_DIR removed, start)",
                    restores_since(survivor.log_path.read_text(errors="replace"), since),
                )
            )
        finally:
            victim.kill()
            survivor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--part", choices=["all", "restart", "failover"], default="all")
    parser.add_argument(
        "--membership",
        choices=("static", "dynamic"),
        default="static",
        help="restart part: static: the worker has a WORKER_INSTANCE_ID (default); dynamic: "
        "none, so the restarted worker waits out the killed member's session timeout",
    )
    parser.add_argument(
        "--keep-log",
        type=Path,
        default=None,
        help="copy the log of the restarted worker (restart) or of the survivor (failover) here",
    )
    args = parser.parse_args()

    def bench(bootstrap: str) -> None:
        if args.part in ("all", "restart"):
            restart(bootstrap)
        if args.part in ("all", "failover"):
            failover_and_rates(bootstrap, args.skus, args.keep_log)

    def restart(bootstrap: str) -> None:
        # Static membership: the restarted worker takes its own place back in the group
        # instead of waiting out the killed member's session timeout.
        static = {"WORKER_INSTANCE_ID": "bench-1"} if args.membership == "static" else {}
        with running_worker(bootstrap, **static) as worker:
            n = args.skus
            load(bootstrap, worker, n)
            worker.wait_for("/stats", lambda b: b["processed"] >= 2 * n, timeout_s=3600)
            print(f"loaded: {2 * n:,} events over {n:,} SKUs")
            worker.kill()
            started = time.monotonic()
            spawned = time.time()
            worker.start(wait=False)
            worker.wait_ready(timeout_s=600, poll_s=POLL_S)
            ready_s = time.monotonic() - started
            ready_at = time.time()
            produce(
                bootstrap,
                worker.topic("orders"),
                [
                    {
                        "order_id": "after-restart",
                        "customer_id": "c",
                        "sku": "R-000000",
                        "quantity": 1,
                        "unit_price": 2.5,
                        "ts": T0 + 3 * n * 0.001,
                    }
                ],
            )
            produced_at = time.time()
            worker.wait_for(
                "/orders/after-restart", lambda b: b is not None, timeout_s=600, poll_s=POLL_S
            )
            visible_s = time.monotonic() - started
            visible_at = time.time()
            assert worker.log_path is not None
            records, longest_s = restore_figures(worker.log_path.read_text(errors="replace"))
            rate = records / longest_s if longest_s else float("nan")
            print(
                f"kill -9 -> restart -> ready: {ready_s:.1f} s; "
                f"-> a new order's status readable: {visible_s:.1f} s "
                f"({args.membership} membership)"
            )
            log = worker.log_path.read_text(errors="replace")
            print("  steps: " + restart_parts(log, spawned, ready_at, produced_at, visible_at))
            print(
                f"restore: {records:,} changelog records, longest partition {longest_s:.2f} s "
                f"-> {rate:,.0f} records/s (partitions restore concurrently)"
            )
            for at, partition, _, took, _, setup in restores_since(log, spawned):
                print(
                    f"  partition {partition}: restored +{at - spawned - took - setup:.1f} s to "
                    f"+{at - spawned:.1f} s after the spawn (restore {took:.2f} s, set-up "
                    f"{setup:.2f} s)"
                )
            if args.keep_log is not None:
                shutil.copyfile(worker.log_path, args.keep_log)

    print("(figures under whatever else runs on this machine)")
    on_a_broker(args.bootstrap, bench)


if __name__ == "__main__":
    main()
