"""Memory and disk against order volume: a worker's RSS after N orders, for growing N.

Starts a throwaway broker (or uses --bootstrap) and one worker, then writes orders over
--skus SKUs in steps (unique ids; event times spread over --span seconds, 80,000 by
default, so the whole run stays inside one 24 h dedupe horizon and every id stays in the
duplicate memory), waits until the worker has processed each step, and prints after it:
the worker's resident set size (VmRSS), its data directory (RocksDB) on disk, the
broker's log directories on disk (inputs, the SKU-keyed topic, outputs, changelogs), and
what the probe (bench/memprobe) saw inside the worker: the shared RocksDB cache's usage
and the Python object counts that grew most since the previous step.
At the end it fits RSS and disk per order over the steps from 1M on, and extrapolates
to --extrapolate orders when the run stopped short of it.
A benchmark, not a test: it asserts nothing.

    nice -n 19 .venv/bin/python bench/memory.py \\
        [--steps 200000,500000,1000000,2000000,3000000,5000000,10000000] [--skus 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.memory import TRIM_EVERY_S  # noqa: E402
from tests.integration.harness import produce, running_worker, throwaway_broker  # noqa: E402

T0 = 1_795_694_400
CHUNK = 100_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path | None) -> float:
    if path is None:
        return float("nan")
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) / 1024 if out.stdout else float("nan")


def orders(start: int, stop: int, skus: int, total: int, span: float) -> list[bytes]:
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


def probe(directory: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """Ask the worker's memory probe for a snapshot (empty if it does not answer)."""
    out = directory / "counts.json"
    out.unlink(missing_ok=True)
    (directory / "request").touch()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and not (directory / "request").exists():
            return dict(json.loads(out.read_text()))
        time.sleep(0.5)
    return {}


def grown(before: dict[str, int], after: dict[str, int], top: int = 6) -> str:
    deltas = sorted(((after.get(k, 0) - before.get(k, 0), k) for k in after), reverse=True)
    return ", ".join(f"{k} +{d:,}" for d, k in deltas[:top] if d > 0) or "nothing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="200000,500000,1000000")
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--span", type=float, default=80_000.0)
    parser.add_argument("--extrapolate", type=int, default=10_000_000)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--broker-dir", default=None, help="log dirs of --bootstrap's broker")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the worker (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=TRIM_EVERY_S + 5,
        help="seconds to wait after catching up before reading RSS: by default one period "
        "of the worker's own malloc_trim (app/engine/memory.py) and a little, so every step "
        "is read at rest, not at a random moment of that period (RSS at catch-up is "
        "printed too)",
    )
    parser.add_argument(
        "--trim",
        action="store_true",
        help="after each step, also print RSS after glibc's malloc_trim(0) in the worker "
        "(memory freed but held by the allocator); changes later steps' RSS",
    )
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    rows: list[tuple[int, float, float, float]] = []

    def bench(bootstrap: str, broker_dir: Path | None) -> None:
        probe_dir = Path(tempfile.mkdtemp(prefix="memprobe-"))
        env = {
            "PYTHONPATH": f"{REPO / 'bench' / 'memprobe'}:{REPO}",
            "MEMPROBE_DIR": str(probe_dir),
        }
        if args.trim:
            env["MEMPROBE_TRIM"] = "1"
        env.update(item.split("=", 1) for item in args.worker_env)
        with running_worker(bootstrap, **env) as worker:
            assert worker.proc is not None
            pid = worker.proc.pid
            print(f"start: RSS {rss_mb(pid):.0f} MB", flush=True)
            counts: dict[str, int] = probe(probe_dir).get("types", {})
            done = 0
            for step in steps:
                for lo in range(done, step, CHUNK):
                    hi = min(step, lo + CHUNK)
                    produce(
                        bootstrap,
                        worker.topic("orders"),
                        orders(lo, hi, args.skus, steps[-1], args.span),
                    )
                done = step
                t = time.monotonic()
                worker.wait_for("/stats", lambda b, n=step: b["processed"] >= n, timeout_s=7200)
                caught_up = time.monotonic() - t
                rss_busy = rss_mb(pid)
                time.sleep(args.settle)
                rss = rss_mb(pid)
                state, logs = disk_mb(worker.workdir), disk_mb(broker_dir)
                rows.append((step, rss, state, logs))
                seen = probe(probe_dir)
                sizes = seen.get("sizes", {})
                cache = sizes.get("rocksdb_cache_usage", 0) / 1024**2
                memtables = sizes.get("rocksdb_memtables", 0) / 1024**2
                print(
                    f"after {step:>10,} orders: RSS {rss:6.0f} MB, RocksDB on disk "
                    f"{state:7.0f} MB, broker logs {logs:7.0f} MB, RocksDB cache "
                    f"{cache:4.0f} MB (memtables {memtables:3.0f} MB); caught up "
                    f"{caught_up:.0f} s after the last write (RSS then {rss_busy:.0f} MB; "
                    f"read {args.settle:.0f} s later)",
                    flush=True,
                )
                if "rss_kb_after_trim" in seen:
                    print(
                        f"   RSS {seen['rss_kb_before_trim'] / 1024:.0f} MB, after "
                        f"malloc_trim(0) {seen['rss_kb_after_trim'] / 1024:.0f} MB",
                        flush=True,
                    )
                now = seen.get("types", {})
                print(f"   objects grown: {grown(counts, now)}", flush=True)
                per_key = {k: v for k, v in sizes.items() if not k.startswith("rocksdb")}
                print(f"   structures: {per_key}", flush=True)
                counts = now or counts
        shutil.rmtree(probe_dir, ignore_errors=True)

    try:
        if args.bootstrap:
            bench(args.bootstrap, Path(args.broker_dir) if args.broker_dir else None)
        else:
            broker_dir = Path(tempfile.mkdtemp(prefix="kafka-memory-"))
            try:
                with throwaway_broker(broker_dir) as bootstrap:
                    bench(bootstrap, broker_dir)
            finally:
                shutil.rmtree(broker_dir, ignore_errors=True)
    finally:
        summarise(rows, args.extrapolate)


def summarise(rows: list[tuple[int, float, float, float]], target: int) -> None:
    """RSS and disk per order between the first step at or past 1M and the last one."""
    big = [r for r in rows if r[0] >= 1_000_000]
    if len(big) < 2:
        return
    (n0, rss0, st0, lg0), (n1, rss1, st1, lg1) = big[0], big[-1]
    per = 1024**2 / (n1 - n0)
    rss_per, st_per, lg_per = (rss1 - rss0) * per, (st1 - st0) * per, (lg1 - lg0) * per
    print(
        f"from {n0:,} to {n1:,} orders: RSS {rss_per:+.1f} B/order, RocksDB "
        f"{st_per:.0f} B/order, broker logs {lg_per:.0f} B/order; RSS after {n1:,} = "
        f"{rss1 / rss0:.2f}x that after {n0:,}"
    )
    if n1 < target:
        extra = (target - n1) / 1024**2
        rss = rss1 + max(rss_per, 0.0) * extra
        print(
            f"extrapolated (linear, not measured) to {target:,} orders: RSS {rss:.0f} MB "
            f"({rss / rss0:.2f}x that after {n0:,}), RocksDB {st1 + st_per * extra:.0f} MB, "
            f"broker logs {lg1 + lg_per * extra:.0f} MB"
        )


if __name__ == "__main__":
    main()
