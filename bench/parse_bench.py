"""Micro-benchmark of the input hot path: parse_order/parse_stock on pre-serialised values.

Run: ``.venv/bin/python bench/parse_bench.py [N]``. Prints events/s; asserts nothing
(figures depend on the machine). Messages are built first so only parsing is timed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import orjson

from app.domain.events import parse_order, parse_stock


def orders(n: int) -> list[bytes]:
    # Realistic variety: distinct ids, 500 SKUs, a small catalogue of prices, both
    # time formats (every fifth message a JSON number).
    return [
        orjson.dumps(
            {
                "order_id": f"o-{i:09d}",
                "customer_id": f"c-{i % 10_000}",
                "sku": f"SKU-{i % 500:04d}",
                "quantity": 1 + i % 7,
                "unit_price": (199, 19.99, 5.5, 1234.56, 0.99)[i % 5],
                "ts": 1795694400 + i / 1000
                if i % 5 == 0
                else f"2026-11-26T12:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
            }
        )
        for i in range(n)
    ]


def stock(n: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event_id": f"s-{i:09d}",
                "sku": f"SKU-{i % 500:04d}",
                "reason": ("delivery", "return", "adjustment")[i % 3],
                "quantity": 1 + i % 50,
                "supplier_id": None if i % 2 else "sup-1",
                "ts": f"2026-11-26T12:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d}Z",
            }
        )
        for i in range(n)
    ]


def rate(parse: Callable[[bytes], object], messages: list[bytes], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):  # best of N: the least disturbed run
        start = time.perf_counter()
        for raw in messages:
            parse(raw)
        best = min(best, time.perf_counter() - start)
    return len(messages) / best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    order_messages, stock_messages = orders(n), stock(n)
    loads = orjson.loads
    print(f"{n} messages, best of 5 runs, Python {sys.version.split()[0]}")
    print(f"  orjson.loads only  {rate(loads, order_messages):>12,.0f} events/s")
    print(f"  parse_order        {rate(parse_order, order_messages):>12,.0f} events/s")
    print(f"  parse_stock        {rate(parse_stock, stock_messages):>12,.0f} events/s")


if __name__ == "__main__":
    main()
