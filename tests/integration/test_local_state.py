"""Local state that survives restarts, and warm standbys (app/engine/checkpoint.py,
app/engine/restore.py, app/engine/standby.py).

Each test compares the worker's results with the oracle *and* reads the worker's own
restore lines ("Partition N restored from R changelog records in S s (...)") to check
which path was taken: local state reused and only a tail replayed, or a rebuild.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.harness import Worker, produce
from tests.integration.oracle import Oracle, check_results

pytestmark = pytest.mark.integration

T0 = 1_795_694_400.0
TRACKER_TABLES = 6
RESTORED = re.compile(
    r"Partition (\d+) restored from (\d+) changelog records in [0-9.]+ s "
    r"\((.*)\)(?:, then .*)?[ \t]*$",
    re.M,
)


def deliveries(skus: list[str], tag: str, ts: float) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{tag}-{s}", "sku": s, "reason": "delivery", "quantity": 60, "ts": ts}
        for s in skus
    ]


def orders(skus: list[str], n: int, tag: str, ts: float, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "order_id": f"{tag}-{i}",
            "customer_id": "c",
            "sku": rng.choice(skus),
            "quantity": rng.randint(1, 4),
            "unit_price": 1.5,
            "ts": ts + i * 0.01,
        }
        for i in range(n)
    ]


def feed(worker: Worker, kafka: str, oracle: Oracle, kind: str, events: list[Any]) -> None:
    topic = worker.topic("orders" if kind == "o" else "stock")
    produce(kafka, topic, events, key=lambda ev: ev["sku"])
    for ev in events:
        oracle.apply(kind, ev)


def restores(log: str) -> list[tuple[int, int, str]]:
    """(partition, records replayed, how) of every restore line in ``log``."""
    return [(int(p), int(n), how) for p, n, how in RESTORED.findall(log)]


def tracker_restores(log: str) -> list[tuple[int, int, str]]:
    """The restores of the tracker's tables (the dead-letter feed's have one table)."""
    return [
        r for r in restores(log) if f"of {TRACKER_TABLES} tables" in r[2] or "sku-state" in r[2]
    ]


def changelog_records(kafka: str, worker: Worker, partitions: set[int] | None = None) -> int:
    """How many offsets the app's changelogs hold (records and transaction markers)."""

    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()
            tps = [
                TopicPartition(t, p)
                for t in cluster.topics()
                if t.startswith(worker.app_id) and t.endswith("-changelog")
                for p in cluster.partitions_for_topic(t) or ()
                if partitions is None or p in partitions
            ]
            assert len(tps) == 7 * (4 if partitions is None else len(partitions)), tps
            ends = await consumer.end_offsets(tps)
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(run())


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_restart_reuses_local_state(worker_factory: Any, kafka: str, stop: str) -> None:
    skus = [f"L-{i:03d}" for i in range(150)]
    oracle = Oracle()
    worker: Worker = worker_factory()
    worker.start()
    feed(worker, kafka, oracle, "s", deliveries(skus, "d1", T0))
    feed(worker, kafka, oracle, "o", orders(skus, 3000, "o1", T0 + 1, seed=1))
    worker.wait_for("/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=180)
    first_log = worker.log_path
    assert first_log is not None
    written = changelog_records(kafka, worker)

    if stop == "sigterm":
        worker.stop()
    else:
        worker.kill()
    feed(worker, kafka, oracle, "o", orders(skus, 400, "o2", T0 + 100, seed=2))
    worker.start()
    check_results(worker, kafka, oracle)

    assert worker.log_path is not None and worker.log_path != first_log
    found = tracker_restores(worker.log_path.read_text(errors="replace"))
    # Every partition of the tracker was restored once at the start, from its own store.
    assert sorted(p for p, _, _ in found) == [0, 1, 2, 3], found
    for _, _, how in found:
        assert how == f"reused local state of {TRACKER_TABLES} of {TRACKER_TABLES} tables", how
    replayed = sum(n for _, n, _ in found)
    # What the stores held before the stop is not read again: only what the new orders
    # were committed with before a partition's restore got to it, if anything.
    assert replayed < written / 4, (replayed, written)


def test_a_data_dir_of_another_app_is_rebuilt_not_trusted(
    worker_factory: Any, kafka: str, tmp_path: Path
) -> None:
    skus = [f"M-{i:03d}" for i in range(60)]
    first: Worker = worker_factory()
    first.start()
    feed(first, kafka, Oracle(), "s", deliveries(skus, "d1", T0))
    feed(first, kafka, Oracle(), "o", orders(skus, 800, "o1", T0 + 1, seed=3))
    first.wait_for("/stats", lambda b: b["processed"] >= 860, timeout_s=180)
    first.stop()

    # Another deployment (its own APP_ID and topics) on the same folder: the stores hold
    # the first one's tables at positions of the first one's changelogs.
    oracle = Oracle()
    second: Worker = worker_factory(DATA_DIR=str(first.workdir / "data"))
    second.start()
    feed(second, kafka, oracle, "s", deliveries(skus[:30], "x1", T0))
    feed(second, kafka, oracle, "o", orders(skus[:30], 300, "x2", T0 + 1, seed=4))
    check_results(second, kafka, oracle)
    assert second.log_path is not None
    found = tracker_restores(second.log_path.read_text(errors="replace"))
    assert sorted(p for p, _, _ in found) == [0, 1, 2, 3], found
    for _, _, how in found:
        assert how.startswith("rebuilt ") and "recorded for another changelog" in how, how
    # Nothing of the first deployment is served by the second.
    for sku in skus[30:]:
        assert second.get(f"/stock/{sku}")[0] == 404, sku


def owners(worker: Worker) -> dict[int, str]:
    _, body = worker.get("/cluster")
    return {p: w["url"] for w in body["workers"] for p in w["partitions"]}


def both_assigned(body: Any) -> bool:
    return len(body["workers"]) == 2 and all(w["partitions"] for w in body["workers"])


def test_a_standby_takes_over_with_only_a_tail_replayed(worker_factory: Any, kafka: str) -> None:
    skus = [f"S-{i:03d}" for i in range(200)]
    oracle = Oracle()
    standby = {"TABLE_STANDBY_REPLICAS": "1"}
    survivor: Worker = worker_factory(**standby)
    survivor.start()
    victim: Worker = worker_factory(app_id=survivor.app_id, **standby)
    victim.start()
    for w in (survivor, victim):
        w.wait_for("/cluster", both_assigned, timeout_s=90)
    taken = {p for p, url in owners(survivor).items() if url == victim.url}
    assert taken and len(taken) < 4, owners(survivor)

    feed(survivor, kafka, oracle, "s", deliveries(skus, "d1", T0))
    feed(survivor, kafka, oracle, "o", orders(skus, 4000, "o1", T0 + 1, seed=5))
    survivor.wait_for("/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=180)
    written = changelog_records(kafka, survivor, taken)
    assert survivor.log_path is not None
    before_kill = survivor.log_path.read_text(errors="replace")
    assert "Standby replicas: " in before_kill
    cut = len(before_kill)

    victim.kill()
    feed(survivor, kafka, oracle, "o", orders(skus, 300, "o2", T0 + 100, seed=6))
    # The survivor answers every SKU as the oracle says (and every output is exact).
    check_results(survivor, kafka, oracle, timeout_s=240)

    after = survivor.log_path.read_text(errors="replace")[cut:]
    # The partitions the survivor kept across the rebalance are restored again, from
    # their own stores: nothing is rebuilt.
    kept = [r for r in tracker_restores(after) if r[0] not in taken]
    assert sorted(p for p, _, _ in kept) == sorted(set(range(4)) - taken), kept
    for _, _, how in kept:
        assert how == f"reused local state of {TRACKER_TABLES} of {TRACKER_TABLES} tables", how
    found = [r for r in tracker_restores(after) if r[0] in taken]
    assert sorted(p for p, _, _ in found) == sorted(taken), found
    for _, _, how in found:
        # The standby's stores were kept, not rebuilt.
        assert how == f"reused local state of {TRACKER_TABLES} of {TRACKER_TABLES} tables", how
    replayed = sum(n for p, n, _ in found)
    assert replayed < written / 4, (replayed, written)
