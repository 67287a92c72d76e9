"""Memory against order volume: a worker's RSS after N orders, for growing N.

Starts a throwaway broker (or uses --bootstrap) and one worker, then writes orders over
--skus SKUs (unique ids, one day of event time at most, so every id stays in the
duplicate memory) in steps, waits until the worker has processed each step, and prints
the worker's resident set size (VmRSS) and its data directory's size on disk after it.
A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/memory.py [--steps 200000,500000,1000000] [--skus 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import on_a_broker, produce, running_worker  # noqa: E402

T0 = 1_795_694_400


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) / 1024 if out.stdout else float("nan")


def orders(start: int, stop: int, skus: int, total: int) -> list[bytes]:
    span = 80_000  # seconds of event time over the whole run: all ids stay remembered
    return [
        orjson.dumps(
            {
                "order_id": f"m{i}",
                "customer_id": f"c{i % 997}",
                "sku": f"SKU-{i % skus:04d}",
                "quantity": 1,
                "unit_price": 9.99,
                "ts": T0 + span * i / total,
            }
        )
        for i in range(start, stop)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="200000,500000,1000000")
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--bootstrap", default=None)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]

    def bench(bootstrap: str) -> None:
        with running_worker(bootstrap) as worker:
            assert worker.proc is not None
            print(f"start: RSS {rss_mb(worker.proc.pid):.0f} MB")
            done = 0
            for step in steps:
                for lo in range(done, step, 100_000):
                    hi = min(step, lo + 100_000)
                    produce(
                        bootstrap,
                        worker.topic("orders"),
                        orders(lo, hi, args.skus, steps[-1]),
                    )
                done = step
                t = time.monotonic()
                worker.wait_for("/stats", lambda b, n=step: b["processed"] >= n, timeout_s=3600)
                print(
                    f"after {step:>9,} orders: RSS {rss_mb(worker.proc.pid):6.0f} MB, "
                    f"state on disk {disk_mb(worker.workdir):6.0f} MB "
                    f"(caught up {time.monotonic() - t:.0f} s after the last write)",
                    flush=True,
                )

    on_a_broker(args.bootstrap, bench)


if __name__ == "__main__":
    main()
