"""Idle close on the real broker: the last windows of a stream that stops still close.

Two workers, each with its own topics, read the same orders: one with
WINDOW_IDLE_CLOSE_SECONDS=3, one with idle close off. Small windows (tumbling 2 s,
hopping 4 s every 2 s, no grace) keep the wall time the test waits short. Every order
goes to partition 0 of ``orders``, so each SKU partition sees them in ``ts`` order and no
order is late unless the test makes it so.
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from tests.integration.harness import Worker, produce, read_topic

pytestmark = pytest.mark.integration

TUMBLING, HOPPING, STEP, IDLE_S = 2, 4, 2, 3
T0 = 1_795_694_400  # 2026-11-26T12:00:00Z
SKUS = [f"I-{i:02d}" for i in range(24)]
WINDOW_ENV = {
    "TUMBLING_SECONDS": str(TUMBLING),
    "HOPPING_SECONDS": str(HOPPING),
    "HOPPING_STEP_SECONDS": str(STEP),
    "WINDOW_GRACE_SECONDS": "0",
}

WindowId = tuple[str, str, str]  # sku, kind, window_start


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def orders(prefix: str, start: float, n: int) -> list[dict[str, Any]]:
    return [
        {
            "order_id": f"{prefix}-{i}",
            "customer_id": "c",
            "sku": SKUS[i % len(SKUS)],
            "quantity": 1 + i % 3,
            "unit_price": 1.25,
            "ts": start + i * 0.05,
        }
        for i in range(n)
    ]


def expected(stream: list[dict[str, Any]]) -> dict[WindowId, tuple[int, int, float]]:
    """Every window the orders fall in, with its result (none of them is late)."""
    agg: dict[WindowId, list[Any]] = {}
    for o in stream:
        t = int(o["ts"] // 1)
        starts = [("tumbling", t - t % TUMBLING)]
        last = t - t % STEP
        starts += [("hopping", s) for s in range(last - HOPPING + STEP, last + STEP, STEP)]
        for kind, s in starts:
            a = agg.setdefault((o["sku"], kind, iso(s)), [0, 0, Decimal(0)])
            a[0] += 1
            a[1] += o["quantity"]
            a[2] += o["quantity"] * Decimal(str(o["unit_price"]))
    return {
        k: (n, units, float(rev.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)))
        for k, (n, units, rev) in agg.items()
    }


def results(worker: Worker, min_count: int = 0) -> list[tuple[WindowId, tuple[int, int, float]]]:
    """Every window result on the worker's ``window-results`` topic, in order."""
    return [
        ((r["sku"], r["kind"], r["window_start"]), (r["orders"], r["units"], r["revenue"]))
        for _, r in read_topic(
            worker.bootstrap, worker.topic("window-results"), min_count=min_count, timeout_s=120
        )
    ]


def send(worker: Worker, stream: list[dict[str, Any]]) -> None:
    produce(worker.bootstrap, worker.topic("orders"), stream, key="one-partition")


def processed(worker: Worker, n: int) -> dict[str, Any]:
    body: dict[str, Any] = worker.wait_for("/stats", lambda b: b["processed"] >= n, timeout_s=120)
    assert body["processed"] == n, body
    return body


def test_idle_close_emits_the_last_windows_once_across_a_kill(worker_factory: Any) -> None:
    on: Worker = worker_factory(WINDOW_IDLE_CLOSE_SECONDS=str(IDLE_S), **WINDOW_ENV)
    off: Worker = worker_factory(**WINDOW_ENV)
    on.start()
    off.start()

    a = orders("a", T0, 240)  # 12 s of event time
    want_a = expected(a)
    send(on, a)
    send(off, a)
    processed(on, len(a))
    stopped = time.monotonic()
    # With idle close, every window of the stream closes, the last ones by idleness.
    got = results(on, min_count=len(want_a))
    print(f"idle close: all {len(want_a)} windows {time.monotonic() - stopped:.1f} s after")
    assert Counter(k for k, _ in got) == Counter(list(want_a))  # each exactly once
    assert dict(got) == want_a

    # Without it, the windows that only idleness closed are still open on the other
    # worker (it had all that wall time too), and nothing was emitted twice.
    processed(off, len(a))
    got_off = dict(results(off))
    last_ts = max(o["ts"] for o in a)
    still_open = {k for k in want_a if k[1] == "tumbling" and k[2] == iso(int(last_ts) // 2 * 2)}
    assert still_open and not still_open & set(got_off)
    assert all(want_a[k] == v for k, v in got_off.items())
    # ... until a later order moves stream time on, in every partition.
    later = [dict(o, order_id=f"later-{o['sku']}", ts=T0 + 100) for o in orders("x", 0, 24)]
    send(off, later)
    processed(off, len(a) + len(later))
    got_off = dict(results(off, min_count=len(want_a)))
    assert {k: v for k, v in got_off.items() if k in want_a} == want_a

    # SIGKILL and restart: the idle-closed windows are never emitted again, and an
    # order for one of them is late (it changes no window result).
    on.kill()
    on.start()
    last = a[-1]
    send(on, [dict(last, order_id="late-1")])
    stats = processed(on, len(a) + 1)
    assert stats["late"] == 1
    # A second stream, killed right after it is processed (before or after its idle
    # close, whichever the machine's load makes it): its windows close once too.
    b = orders("b", T0 + 1000, 120)
    want_b = expected(b)
    send(on, b)
    processed(on, len(a) + 1 + len(b))
    on.kill()
    on.start()
    got = results(on, min_count=len(want_a) + len(want_b))
    assert Counter(k for k, _ in got) == Counter([*want_a, *want_b])
    assert dict(got) == {**want_a, **want_b}
    final = processed(on, len(a) + 1 + len(b))
    assert final["late"] == 1
    # The dashboard and the HTTP view show idle-closed windows like any other.
    sku = last["sku"]
    _, body = on.get(f"/windows/{sku}?kind=tumbling")
    assert body["windows"] and all(w["closed"] for w in body["windows"])
