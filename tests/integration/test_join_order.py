"""The join's order on a real broker: a backlog is applied in the contract's merge order.

The backlog is written before the worker starts, with both topics interleaving in event
time, events of the same SKUs in both, spread unevenly over the partitions (some hold
eight times as many as others), keys that tell nothing (the app must not use them), a
few events older than the one before them in their partition, and re-sent orders. The
oracle sorts it by the contract's merge key and applies the contract's stock rules
(the Oracle of test_exactly_once, written from the contract alone). Every
order status, level and supplier order must be the oracle's, whatever the batch size,
the number of workers, or a SIGKILL in the middle of the catch-up.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from tests.integration.harness import Worker, create_topics, produce_to
from tests.integration.oracle import Oracle, check_results
from tests.integration.test_exactly_once import kill_during

pytestmark = pytest.mark.integration

T0 = 1_795_694_400.0  # 2026-11-26T12:00:00Z
PARTITIONS = 4
ORDER_WEIGHTS = (8, 4, 2, 1)
STOCK_WEIGHTS = (1, 2, 4, 8)


Message = tuple[str, int, dict[str, Any]]
"""(topic: "orders" or "stock", partition, value), in the order written."""


def make_backlog(seed: int, skus: int, orders: int, moves: int) -> list[Message]:
    rng = random.Random(seed)
    names = [f"J-{i:03d}" for i in range(skus)]
    per_partition: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def put(topic: str, weights: tuple[int, ...], value: dict[str, Any]) -> None:
        partition = rng.choices(range(PARTITIONS), weights)[0]
        per_partition.setdefault((topic, partition), []).append(value)

    for i in range(orders):
        put(
            "orders",
            ORDER_WEIGHTS,
            {
                "order_id": f"jo-{i}",
                "customer_id": f"c{rng.randint(1, 50)}",
                "sku": rng.choice(names),
                "quantity": rng.randint(1, 6),
                "unit_price": round(rng.uniform(1, 20), 2),
                "ts": T0 + rng.uniform(0, 3600),
            },
        )
    for i in range(moves):
        reason = rng.choices(["delivery", "return", "adjustment"], (8, 1, 1))[0]
        quantity = rng.randint(5, 40) if reason == "delivery" else rng.randint(1, 4)
        if reason == "adjustment" and rng.random() < 0.5:
            quantity = -quantity
        put(
            "stock",
            STOCK_WEIGHTS,
            {
                "event_id": f"js-{i}",
                "sku": rng.choice(names),
                "reason": reason,
                "quantity": quantity,
                "supplier_id": None,
                "ts": T0 + rng.uniform(0, 3600),
            },
        )
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for where, values in per_partition.items():
        values.sort(key=lambda v: v["ts"])
        # A few events written after younger ones of their partition.
        for _ in range(len(values) // 30):
            i = rng.randrange(1, len(values))
            values[i] = {**values[i], "ts": values[i]["ts"] - rng.uniform(0, 300)}
        if where[0] == "orders":
            # Producer retries: the same order again, a little later in the partition.
            for _ in range(len(values) // 100):
                i = rng.randrange(len(values) - 1)
                values.insert(rng.randint(i + 1, len(values)), dict(values[i]))
        runs[where] = values
    # Written partition by partition, interleaved: what each partition holds is fixed,
    # the order across partitions is the producer's business.
    out: list[Message] = []
    cursors = dict.fromkeys(runs, 0)
    while cursors:
        where = rng.choice(sorted(cursors))
        n = rng.randint(1, 50)
        topic, partition = where
        for value in runs[where][cursors[where] : cursors[where] + n]:
            out.append((topic, partition, value))
        cursors[where] += n
        if cursors[where] >= len(runs[where]):
            del cursors[where]
    return out


def merge_oracle(backlog: list[Message]) -> Oracle:
    """The contract's merge: sorted by (partition's max ts so far, topic, partition,
    offset), then the stock rules in that order."""
    mts: dict[tuple[str, int], float] = {}
    offset: Counter[tuple[str, int]] = Counter()
    keyed = []
    for topic, partition, value in backlog:
        where = (topic, partition)
        mts[where] = max(mts.get(where, value["ts"]), value["ts"])
        code = 0 if topic == "orders" else 1
        keyed.append(((mts[where], code, partition, offset[where]), topic, value))
        offset[where] += 1
    oracle = Oracle()
    for _, topic, value in sorted(keyed, key=lambda k: k[0]):
        oracle.apply("o" if topic == "orders" else "s", value)
    return oracle


def write_backlog(worker: Worker, kafka: str, backlog: list[Message]) -> None:
    create_topics(kafka, [worker.topic("orders"), worker.topic("stock")], PARTITIONS)
    produce_to(kafka, ((worker.topic(t), p, v) for t, p, v in backlog))


BACKLOG = dict(seed=11, skus=30, orders=2_400, moves=700)


@pytest.mark.parametrize(
    ("batch_size", "workers", "join_read"),
    [
        (1, 1, "direct"),
        (100, 1, "direct"),
        (10_000, 1, "direct"),
        (10_000, 2, "direct"),
        (100, 2, "repartition"),
    ],
    ids=["batch-1", "batch-100", "batch-10000", "two-workers", "two-workers-repartitioned"],
)
def test_a_backlog_is_applied_in_the_contracts_merge_order(
    worker_factory: Any, kafka: str, batch_size: int, workers: int, join_read: str
) -> None:
    backlog = make_backlog(**BACKLOG)
    oracle = merge_oracle(backlog)
    # The arrival order would give other answers: the test can tell the two apart.
    naive = Oracle()
    for topic, _, value in backlog:
        naive.apply("o" if topic == "orders" else "s", value)
    assert naive.statuses != oracle.statuses
    first: Worker = worker_factory(BATCH_SIZE=str(batch_size), JOIN_READ=join_read)
    write_backlog(first, kafka, backlog)
    group = [first] + [
        worker_factory(first.app_id, BATCH_SIZE=str(batch_size), JOIN_READ=join_read)
        for _ in range(workers - 1)
    ]
    for w in group:
        w.start(wait=False)
    for w in group:
        w.wait_ready(timeout_s=120)
    backordered = sum(1 for s in oracle.statuses.values() if s[0] == "backordered")
    assert backordered > 100  # the order matters in this backlog
    check_results(first, kafka, oracle, timeout_s=300)


@pytest.mark.parametrize("join_read", ["direct", "repartition"])
def test_a_sigkill_in_the_middle_of_a_catch_up_changes_nothing(
    worker_factory: Any, kafka: str, join_read: str
) -> None:
    backlog = make_backlog(seed=12, skus=40, orders=12_000, moves=3_000)
    oracle = merge_oracle(backlog)
    worker: Worker = worker_factory(BATCH_SIZE="500", JOIN_READ=join_read)
    write_backlog(worker, kafka, backlog)
    worker.start()
    kill_during(worker, oracle.applied, 0.4)
    worker.start()
    check_results(worker, kafka, oracle, timeout_s=300)


def test_an_idle_input_partition_does_not_hold_back_live_traffic(
    worker_factory: Any, kafka: str
) -> None:
    """Orders partition 3 and stock partition 3 get a few events, then nothing at all:
    live events on the other partitions are still applied, one after another, while
    those two stay idle (read to their end, they are not waited for)."""
    worker: Worker = worker_factory()
    create_topics(kafka, [worker.topic("orders"), worker.topic("stock")], PARTITIONS)
    now = time.time()
    opening = [
        (
            "stock",
            3,
            {
                "event_id": "idle-s",
                "sku": "L-1",
                "reason": "delivery",
                "quantity": 50,
                "ts": now - 61,
            },
        ),
        (
            "orders",
            3,
            {
                "order_id": "idle-o",
                "customer_id": "c",
                "sku": "L-1",
                "quantity": 1,
                "unit_price": 1,
                "ts": now - 60,
            },
        ),
    ]
    produce_to(kafka, ((worker.topic(t), p, v) for t, p, v in opening))
    worker.start()
    worker.wait_for("/orders/idle-o", lambda b: b["status"] == "allocated", timeout_s=60)
    for i in range(12):
        ts = time.time()
        live = [
            (
                "stock",
                i % 3,
                {
                    "event_id": f"live-s{i}",
                    "sku": "L-1",
                    "reason": "delivery",
                    "quantity": 2,
                    "ts": ts,
                },
            ),
            (
                "orders",
                (i + 1) % 3,
                {
                    "order_id": f"live-o{i}",
                    "customer_id": "c",
                    "sku": "L-1",
                    "quantity": 1,
                    "unit_price": 1,
                    "ts": ts,
                },
            ),
        ]
        produce_to(kafka, ((worker.topic(t), p, v) for t, p, v in live))
        body = worker.wait_for(f"/orders/live-o{i}", lambda b: b is not None, timeout_s=30)
        assert body["status"] == "allocated"
        time.sleep(0.5)
    _, stock = worker.get("/stock/L-1")
    assert stock["level"] == 50 - 1 + 12 * (2 - 1)
