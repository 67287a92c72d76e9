"""Static group membership (WORKER_INSTANCE_ID) on a real broker, two workers.

A worker killed with SIGKILL mid-stream and restarted with the same id takes its own
place back: the broker swaps its member id in the same generation, the other worker is
not rebalanced, and nobody waits out the session timeout (FAILURE_DETECTION_SECONDS is
set far above anything the test waits for, so a rebalance would hold the group for it).
The results equal the oracle's. A worker stopped with SIGTERM leaves the group, so the
other one takes its partitions without waiting for the session timeout either.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.harness import Worker, free_port, produce
from tests.integration.oracle import Oracle, check_results
from tests.integration.test_exactly_once import by_sku, make_events

pytestmark = pytest.mark.integration

SESSION_S = 120
"""FAILURE_DETECTION_SECONDS of the test's workers: longer than any wait of the test."""

JOINED = re.compile(r"Joined group '[^']+' \(generation (\d+)\) with member_id (\S+)")


def group(bootstrap: str, group_id: str) -> tuple[str, list[str]]:
    """(state, sorted member ids) of a consumer group, from the group coordinator."""

    async def run() -> tuple[str, list[str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_consumer_groups([group_id])
        finally:
            await admin.close()
        [described] = response.groups
        error_code, _, state = described[:3]
        assert error_code == 0, described
        members = described[5]
        return state, sorted(m[0] for m in members)

    return asyncio.run(run())


def wait_group(
    bootstrap: str, group_id: str, predicate: Any, timeout_s: float = 60
) -> tuple[str, list[str]]:
    deadline = time.monotonic() + timeout_s
    found = group(bootstrap, group_id)
    while not predicate(*found) and time.monotonic() < deadline:
        time.sleep(0.5)
        found = group(bootstrap, group_id)
    assert predicate(*found), found
    return found


def joins(worker: Worker) -> list[tuple[int, str]]:
    """Every (generation, member id) this worker joined the group with, over its logs."""
    found = []
    for log in worker.logs():
        found += [(int(g), m) for g, m in JOINED.findall(log.read_text(errors="replace"))]
    return found


def processed(worker: Worker) -> int:
    return int(worker.get("/stats")[1]["processed"])


def test_a_static_member_killed_and_restarted_keeps_its_place(kafka: str, tmp_path: Path) -> None:
    initial, stream, restock = make_events(seed=11, skus=80, orders=4_000)
    oracle = Oracle()
    env = {"BATCH_SIZE": "200", "FAILURE_DETECTION_SECONDS": str(SESSION_S)}
    w1 = Worker(kafka, tmp_path / "w1", env_extra={**env, "WORKER_INSTANCE_ID": "w1"})
    w2 = Worker(
        kafka, tmp_path / "w2", env_extra={**env, "WORKER_INSTANCE_ID": "w2"}, app_id=w1.app_id
    )
    try:
        w1.start(wait=False)
        w2.start(wait=False)
        w1.wait_ready(180)
        w2.wait_ready(180)
        for w in (w1, w2):
            w.wait_for("/cluster", lambda b: len(b["workers"]) == 2, timeout_s=90)
        produce(kafka, w1.topic("stock"), initial, key=by_sku)
        for ev in initial:
            oracle.apply("s", ev)
        w1.wait_for("/stats", lambda b: b["processed"] >= oracle.applied, timeout_s=120)
        # Static members' ids are "<instance id>-<uuid>" (Kafka's rule).
        _, before = wait_group(
            kafka, w1.app_id, lambda s, m: s == "Stable" and len(m) == 2, timeout_s=90
        )
        assert [m.split("-")[0] for m in before] == ["w1", "w2"]
        w1_joins, w2_joins = joins(w1), joins(w2)
        generation = w1_joins[-1][0]
        assert w2_joins[-1][0] == generation

        produce(kafka, w1.topic("orders"), stream, key=by_sku)
        for ev in stream:
            oracle.apply("o", ev)
        start = processed(w1)
        w1.wait_for("/stats", lambda b: b["processed"] > start + 1_000, timeout_s=120)
        w1.kill()  # mid-stream: no LeaveGroup, no final commit
        w1.start(wait=False)
        w1.wait_ready(180)

        # The broker gave the restarted worker its old place: a new member id for the
        # instance id "w1", in the same generation; w2 kept its member id and did not
        # join again (no rebalance), and the group never lost a member.
        _, after = wait_group(kafka, w1.app_id, lambda s, m: s == "Stable")
        assert len(after) == 2
        assert after[1] == before[1]  # w2
        assert after[0] != before[0] and after[0].startswith("w1-")
        rejoined = joins(w1)[len(w1_joins) :]
        assert rejoined == [(generation, after[0])]
        assert joins(w2) == w2_joins

        produce(kafka, w1.topic("stock"), restock, key=by_sku)
        for ev in restock:
            oracle.apply("s", ev)
        check_results(w1, kafka, oracle)
        assert joins(w2) == w2_joins  # still no rebalance

        # SIGTERM: w1 leaves the group, and w2 takes every partition, long before the
        # session timeout could have removed w1.
        w1.stop()
        wait_group(kafka, w1.app_id, lambda s, m: m == [before[1]], timeout_s=SESSION_S / 2)
        w2.wait_for("/cluster", lambda b: len(b["workers"]) == 1, timeout_s=SESSION_S / 2)
        assert "Left the group (static member w1)" in w1.logs()[-1].read_text()
        assert len(joins(w2)) > len(w2_joins)  # the rebalance that gave it w1's partitions
        for sku, level in list(oracle.levels.items())[:20]:
            w2.wait_for(f"/stock/{sku}", lambda b, level=level: b["level"] == level)
    finally:
        for w in (w1, w2):
            w.stop()


def test_a_second_worker_with_a_running_workers_instance_id_is_refused(
    kafka: str, tmp_path: Path
) -> None:
    # Without the start-up check the second worker took the first one's place in the
    # group (fencing it) with an assignment made for the first one's URL, on which
    # Faust's assignor stopped: neither worker worked any more, and nothing said why.
    env = {"WORKER_INSTANCE_ID": "dup", "FAILURE_DETECTION_SECONDS": str(SESSION_S)}
    w1 = Worker(kafka, tmp_path / "w1", env_extra=env)
    w2 = Worker(kafka, tmp_path / "w2", env_extra=env, app_id=w1.app_id)
    try:
        w1.start()
        _, before = wait_group(kafka, w1.app_id, lambda s, m: s == "Stable" and len(m) == 1)
        w2.start(wait=False)
        assert w2.proc is not None
        assert w2.proc.wait(timeout=60) == 2
        said = w2.tail()
        assert f"WORKER_INSTANCE_ID 'dup' is in use by the running worker at {w1.url}" in said
        # The first worker was not disturbed: same member, still serving.
        assert group(kafka, w1.app_id) == ("Stable", before)
        assert w1.get("/health") == (200, {"status": "ok"})
        assert joins(w1) == joins(w1)[:1]
    finally:
        for w in (w1, w2):
            w.stop()


def test_a_static_member_restarted_at_another_address_gets_an_assignment_of_its_own(
    kafka: str, tmp_path: Path
) -> None:
    # The broker hands a restarted static member its former assignment, which names the
    # former URL; Faust's assignor stopped on that, and the worker never became ready.
    # Now the start waits (at most FAILURE_DETECTION_SECONDS) for the group to drop the
    # former member, whose address no longer answers, and then joins afresh.
    detection_s = 6
    w1 = Worker(
        kafka,
        tmp_path / "w1",
        env_extra={"WORKER_INSTANCE_ID": "moved", "FAILURE_DETECTION_SECONDS": str(detection_s)},
    )
    try:
        w1.start()
        produce(
            kafka,
            w1.topic("stock"),
            [
                {
                    "event_id": "d1",
                    "sku": "M-1",
                    "reason": "delivery",
                    "quantity": 7,
                    "ts": 1_795_694_400,
                }
            ],
        )
        w1.wait_for("/stock/M-1", lambda b: b["level"] == 7)
        old_url = w1.url
        w1.kill()
        w1.port = free_port()
        started = time.monotonic()
        w1.start(wait=False)
        w1.wait_ready(detection_s + 60)
        waited_s = time.monotonic() - started
        said = w1.logs()[-1].read_text(errors="replace")
        assert f"WORKER_INSTANCE_ID 'moved' was last at {old_url}, which does not answer" in said
        assert waited_s < detection_s + 30
        w1.wait_for("/cluster", lambda b: [x["url"] for x in b["workers"]] == [w1.url])
        assert w1.get("/stock/M-1")[1]["level"] == 7
    finally:
        w1.stop()
