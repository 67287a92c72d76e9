"""Micro-benchmark of app.rules.windows: orders/s through PartitionWindows.

200k orders over 1000 SKUs, default windows (tumbling 60 s, hopping 300/60 s,
grace 10 s, expedite threshold 2), roughly 2000 orders per second of event
time with some out-of-order ts. Prints figures, asserts nothing.

    .venv/bin/python bench/windows_bench.py
"""

from __future__ import annotations

import random
import time
from decimal import Decimal

from app.domain.rules.windows import PartitionWindows, hopping, tumbling

N_ORDERS = 200_000
N_SKUS = 1_000
BATCH = 100


def make_orders(seed: int = 42) -> list[tuple[str, float, int, Decimal]]:
    rng = random.Random(seed)
    skus = [f"SKU-{i:04d}" for i in range(N_SKUS)]
    prices = [Decimal(f"{rng.randint(1, 99999)}") / 100 for _ in range(N_SKUS)]
    base = 1_764_158_400.0
    orders = []
    for i in range(N_ORDERS):
        n = rng.randrange(N_SKUS)
        ts = base + i / 2000 - rng.random() * 5  # up to 5 s out of order
        orders.append((skus[n], ts, rng.randint(1, 5), prices[n]))
    return orders


def run(
    orders: list[tuple[str, float, int, Decimal]], batch: int
) -> tuple[float, float, int, int]:
    pw = PartitionWindows([tumbling(60), hopping(300, 60)], grace_s=10, expedite_threshold=2)
    closed = late = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i, (sku, ts, qty, price) in enumerate(orders, 1):
        late += pw.apply_order(sku, ts, qty, price).late
        if i % batch == 0:
            closed += len(pw.close_due())
    closed += len(pw.close_due())
    return time.perf_counter() - t0, time.process_time() - c0, closed, late


def main() -> None:
    orders = make_orders()
    for batch in (1, BATCH):
        runs = [run(orders, batch) for _ in range(3)]
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        _, _, closed, late = runs[0]
        print(
            f"close_due every {batch:>3} order(s): {N_ORDERS / wall:>9,.0f} orders/s wall, "
            f"{N_ORDERS / cpu:>9,.0f} orders/s CPU "
            f"({N_ORDERS:,} orders, {N_SKUS} SKUs, {closed:,} windows closed, {late} late)"
        )


if __name__ == "__main__":
    main()
