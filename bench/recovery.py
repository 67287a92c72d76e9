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
A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/recovery.py [--skus 100000] [--bootstrap HOST:PORT]
        [--membership static|dynamic]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import on_a_broker, produce, running_worker  # noqa: E402

T0 = 1_795_694_400
RESTORED = re.compile(r"restored from (\d+) changelog records in ([0-9.]+) s")


def restore_figures(log: str) -> tuple[int, float]:
    found = [(int(n), float(s)) for n, s in RESTORED.findall(log)]
    return sum(n for n, _ in found), max((s for _, s in found), default=0.0)


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


def restart_parts(log: str, spawned: float, ready: float, visible: float) -> str:
    """The way back after a kill -9, step by step (wall clock, from the worker's log):
    process start (interpreter, imports, the app, Faust's services) until it asks to
    join the group; the join; the restore of the tables; the rest until ``/health``
    says ok; then until a new order's status is readable."""
    t = log_times(log)
    marks = [("spawned", spawned)]
    marks += [(n, t[n]) for n in ("join requested", "group synced") if n in t]
    if "restore done" in t:
        marks.append(("restore done", t["restore done"]))
    marks += [("ready", ready), ("new order visible", visible)]
    parts = [f"{b[0]} +{b[1] - a[1]:.1f} s" for a, b in pairwise(marks)]
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument(
        "--membership",
        choices=("static", "dynamic"),
        default="static",
        help="static: the worker has a WORKER_INSTANCE_ID (default); dynamic: none, so the "
        "restarted worker waits out the killed member's session timeout",
    )
    args = parser.parse_args()

    def bench(bootstrap: str) -> None:
        # Static membership: the restarted worker takes its own place back in the group
        # instead of waiting out the killed member's session timeout.
        static = {"WORKER_INSTANCE_ID": "bench-1"} if args.membership == "static" else {}
        with running_worker(bootstrap, **static) as worker:
            n = args.skus
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
            worker.wait_for("/stats", lambda b: b["processed"] >= 2 * n, timeout_s=3600)
            print(f"loaded: {2 * n:,} events over {n:,} SKUs")
            worker.kill()
            started = time.monotonic()
            spawned = time.time()
            worker.start(wait=False)
            worker.wait_ready(timeout_s=600)
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
            worker.wait_for("/orders/after-restart", lambda b: b is not None, timeout_s=600)
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
            print("  steps: " + restart_parts(log, spawned, ready_at, visible_at))
            print(
                f"restore: {records:,} changelog records, longest partition {longest_s:.2f} s "
                f"-> {rate:,.0f} records/s (partitions restore concurrently)"
            )

    on_a_broker(args.bootstrap, bench)


if __name__ == "__main__":
    main()
