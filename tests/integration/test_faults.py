"""Broker faults and worker churn, on real brokers: results equal an uninterrupted run.

Each test compares with the oracle of test_exactly_once.py (written from the contract
alone). Phases write one topic each and wait until they are applied, so the order in
which the events of one SKU reach the join is unambiguous and the oracle can replay it.

- a whole (single-broker) cluster killed with SIGKILL for a minute while the worker has
  a backlog to process: the worker stays up (same process), ``/health`` says degraded
  meanwhile, and it resumes by itself;
- SIGTERM while the broker is gone: the worker exits within 10 s;
- a 3-node cluster losing the broker that leads most partitions: events keep being
  applied while it is down, and every topic the app created has 3 replicas;
- worker churn with 8 partitions: one of two workers killed mid-stream, a third one
  added later; every worker answers every SKU correctly.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.harness import (
    REPO,
    Cluster,
    Worker,
    produce,
    throwaway_cluster,
)
from tests.integration.oracle import Oracle, check_results
from tests.integration.test_exactly_once import by_sku, make_events

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("FAULT_OUTAGE_SECONDS", "60"))
"""How long the broker stays down in the outage test (a fault's length, not a wait);
the contract's 5 minutes: ``FAULT_OUTAGE_SECONDS=300``."""


@pytest.fixture(scope="module")
def lone_broker() -> Iterator[Cluster]:
    """A single broker of this module's own, which its tests kill and restart."""
    with throwaway_cluster(1) as cluster:
        yield cluster


def record(name: str, figures: dict[str, Any]) -> None:
    """Keep a test's figures in artifacts/ (the README's Reliability table quotes them)."""
    (REPO / "artifacts").mkdir(exist_ok=True)
    if name == "broker-outage" and OUTAGE_S != 60:
        name += f"-{OUTAGE_S:.0f}s"
    (REPO / "artifacts" / f"faults-{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


def wait_health(worker: Worker, want: int, timeout_s: float) -> tuple[int, Any]:
    """Poll /health until it answers ``want``; return the answer."""
    deadline = time.monotonic() + timeout_s
    answer: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        answer = worker.get("/health")
        if answer[0] == want:
            return answer
        time.sleep(0.3)
    raise AssertionError(f"/health never answered {want}; last: {answer}\n{worker.tail()}")


def processed(worker: Worker) -> int:
    status, body = worker.get("/stats")
    return int(body["processed"]) if status == 200 else -1


def wait_processed(worker: Worker, at_least: int, timeout_s: float) -> int:
    body = worker.wait_for("/stats", lambda b: b["processed"] >= at_least, timeout_s=timeout_s)
    return int(body["processed"])


def error_lines(worker: Worker) -> int:
    assert worker.log_path is not None
    return sum("[ERROR]" in line for line in worker.log_path.read_text().splitlines())


def test_broker_outage_under_load(lone_broker: Cluster, tmp_path: Path) -> None:
    """The only broker SIGKILLed for a minute with a backlog: same process, 503 degraded
    meanwhile, resumes by itself, results exact."""
    initial, stream, restock = make_events(seed=11, skus=200, orders=6_000)
    oracle = Oracle()
    # Small batches: the backlog takes a while, so the broker dies mid-stream.
    worker = Worker(lone_broker.bootstrap, tmp_path / "w", env_extra={"BATCH_SIZE": "500"})
    worker.start()
    try:
        assert worker.proc is not None
        pid = worker.proc.pid
        produce(lone_broker.bootstrap, worker.topic("stock"), initial, key=by_sku)
        for ev in initial:
            oracle.apply("s", ev)
        wait_processed(worker, oracle.applied, 90)

        produce(lone_broker.bootstrap, worker.topic("orders"), stream, key=by_sku)
        for ev in stream:
            oracle.apply("o", ev)
        start = processed(worker)
        worker.wait_for("/stats", lambda b: b["processed"] > start + 500, timeout_s=90)
        killed_at = processed(worker)
        errors_before = error_lines(worker)
        lone_broker.kill(1)
        down_at = time.monotonic()

        status, body = wait_health(worker, 503, timeout_s=30)
        assert body["status"] == "degraded" and body["reason"], body
        degraded_after = time.monotonic() - down_at
        answers: Counter[str] = Counter()
        while time.monotonic() - down_at < OUTAGE_S:
            assert worker.proc.poll() is None, f"worker exited during the outage\n{worker.tail()}"
            status, body = worker.get("/health")
            answers["ok" if status == 200 else body["status"]] += 1
            time.sleep(1)
        assert answers["ok"] == 0, answers
        outage_errors = error_lines(worker) - errors_before

        lone_broker.start(1)
        back_at = time.monotonic()
        wait_health(worker, 200, timeout_s=120)
        resumed_after = time.monotonic() - back_at
        # Phases stay apart (the oracle applies them in turn): the orders first.
        wait_processed(worker, oracle.applied, 180)
        produce(lone_broker.bootstrap, worker.topic("stock"), restock, key=by_sku)
        for ev in restock:
            oracle.apply("s", ev)
        figures = check_results(worker, lone_broker.bootstrap, oracle)

        assert worker.proc.pid == pid and worker.proc.poll() is None and worker.starts == 1
        # Expected failures are rate-limited warnings, not thousands of ERROR lines.
        assert outage_errors < 50, outage_errors
        figures.update(
            outage_seconds=OUTAGE_S,
            processed_when_killed=killed_at,
            backlog_when_killed=len(initial) + len(stream) - killed_at,
            degraded_after_s=round(degraded_after, 1),
            health_answers_during_outage=dict(answers),
            ok_again_after_restart_s=round(resumed_after, 1),
            error_lines_during_outage=outage_errors,
            worker_restarts=0,
        )
        record("broker-outage", figures)
    finally:
        worker.stop()


def test_sigterm_during_outage_exits_within_10s(lone_broker: Cluster, tmp_path: Path) -> None:
    worker = Worker(lone_broker.bootstrap, tmp_path / "w")
    worker.start()
    try:
        assert worker.proc is not None
        initial, _, _ = make_events(seed=3, skus=50, orders=0)
        produce(lone_broker.bootstrap, worker.topic("stock"), initial, key=by_sku)
        wait_processed(worker, len(initial), 90)
        lone_broker.kill(1)
        _, body = wait_health(worker, 503, timeout_s=30)
        assert body["status"] == "degraded", body
        sent = time.monotonic()
        worker.proc.send_signal(15)
        # /health never says ok while the worker stops.
        while worker.proc.poll() is None and time.monotonic() - sent < 15:
            assert worker.get("/health")[0] != 200
            time.sleep(0.2)
        took = time.monotonic() - sent
        assert worker.proc.poll() is not None, f"still running 15 s after SIGTERM\n{worker.tail()}"
        assert took < 10, took
        record("sigterm-outage", {"sigterm_to_exit_s": round(took, 1)})
    finally:
        worker.kill()
        lone_broker.start(1)


async def _leaders(bootstrap: str, app_id: str) -> tuple[Counter[int], dict[str, set[int]]]:
    """Partitions led per broker node, and the replica counts of each topic of the app."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(app_id)]
        led: Counter[int] = Counter()
        replicas: dict[str, set[int]] = {}
        for t in await admin.describe_topics(names):
            replicas[t["topic"]] = {len(p["replicas"]) for p in t["partitions"]}
            led.update(p["leader"] for p in t["partitions"])
        return led, replicas
    finally:
        await admin.close()


class SteadyProducer(threading.Thread):
    """Writes ``events`` at about ``rate`` per second, idempotently (a broker lost
    mid-stream must not make a retried send a second order)."""

    def __init__(self, bootstrap: str, topic: str, events: list[Any], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            request_timeout_ms=120_000,
        )
        await producer.start()
        try:
            pending = []
            chunk = max(1, int(self.rate / 10))
            for i in range(0, len(self.events), chunk):
                for ev in self.events[i : i + chunk]:
                    pending.append(
                        await producer.send(self.topic, orjson.dumps(ev), key=ev["sku"].encode())
                    )
                self.sent = i + chunk
                await asyncio.sleep(0.1)
            await asyncio.gather(*pending)
            self.sent = len(self.events)
        finally:
            await producer.stop()


def test_cluster_broker_loss_keeps_processing(tmp_path: Path) -> None:
    """3 brokers, replication 3: SIGKILL the one leading most partitions mid-stream;
    events keep being applied while it is down, results exact after it returns."""
    initial, stream, restock = make_events(seed=23, skus=150, orders=4_000)
    oracle = Oracle()
    with throwaway_cluster(3) as cluster:
        worker = Worker(cluster.bootstrap, tmp_path / "w")
        worker.start(timeout_s=180)
        try:
            led, replicas = asyncio.run(_leaders(cluster.bootstrap, worker.app_id))
            assert replicas and all(r == {3} for r in replicas.values()), replicas
            produce(cluster.bootstrap, worker.topic("stock"), initial, key=by_sku)
            for ev in initial:
                oracle.apply("s", ev)
            wait_processed(worker, oracle.applied, 120)

            for ev in stream:
                oracle.apply("o", ev)
            producer = SteadyProducer(cluster.bootstrap, worker.topic("orders"), stream, 200)
            producer.start()
            worker.wait_for("/stats", lambda b: b["processed"] > len(initial) + 300, 90)
            led, _ = asyncio.run(_leaders(cluster.bootstrap, worker.app_id))
            victim = led.most_common(1)[0][0]
            cluster.kill(victim)
            down_at = time.monotonic()
            at_kill = processed(worker)
            # Applied while the broker is down: well past what was applied at the kill.
            grown = wait_processed(worker, at_kill + 600, timeout_s=90)
            still_down_s = time.monotonic() - down_at
            cluster.start(victim)
            producer.join(180)
            assert producer.error is None, producer.error
            assert not producer.is_alive()

            wait_processed(worker, oracle.applied, 180)  # phases stay apart
            produce(cluster.bootstrap, worker.topic("stock"), restock, key=by_sku)
            for ev in restock:
                oracle.apply("s", ev)
            figures = check_results(worker, cluster.bootstrap, oracle)
            wait_health(worker, 200, timeout_s=60)
            assert worker.proc is not None and worker.proc.poll() is None and worker.starts == 1
            _, replicas = asyncio.run(_leaders(cluster.bootstrap, worker.app_id))
            assert all(r == {3} for r in replicas.values()), replicas
            figures.update(
                brokers=3,
                killed_node=victim,
                partitions_it_led=led[victim],
                processed_at_kill=at_kill,
                processed_while_down=grown - at_kill,
                seconds_down_when_checked=round(still_down_s, 1),
                topics_checked_rf3=len(replicas),
                worker_restarts=0,
            )
            record("broker-loss", figures)
        finally:
            worker.stop()


def test_worker_churn_eight_partitions(kafka: str, tmp_path: Path) -> None:
    """Two workers, one SIGKILLed mid-stream, a third added later: results exact, and
    every worker answers every SKU correctly within 15 s of the group settling."""
    initial, stream, restock = make_events(seed=31, skus=120, orders=8_000)
    oracle = Oracle()
    env = {"TOPIC_PARTITIONS": "8", "BATCH_SIZE": "500"}
    w1 = Worker(kafka, tmp_path / "w1", env_extra=env)
    w2 = Worker(kafka, tmp_path / "w2", env_extra=env, app_id=w1.app_id)
    w3 = Worker(kafka, tmp_path / "w3", env_extra=env, app_id=w1.app_id)
    try:
        # Started together: neither may exit on its own (e.g. a fenced producer).
        w1.start(wait=False)
        w2.start(wait=False)
        w1.wait_ready(180)
        w2.wait_ready(180)
        for w in (w1, w2):
            w.wait_for("/cluster", lambda b: len(b["workers"]) == 2, timeout_s=90)

        produce(kafka, w1.topic("stock"), initial, key=by_sku)
        for ev in initial:
            oracle.apply("s", ev)
        wait_processed(w1, oracle.applied, 120)
        produce(kafka, w1.topic("orders"), stream, key=by_sku)
        for ev in stream:
            oracle.apply("o", ev)
        start = processed(w1)
        w1.wait_for("/stats", lambda b: b["processed"] > start + 500, timeout_s=90)
        killed_at = processed(w1)
        w2.kill()
        w1.wait_for("/cluster", lambda b: len(b["workers"]) == 1, timeout_s=90)

        # Phases stay apart (the oracle applies them in turn): the orders first; the
        # restock is written while the third worker joins.
        wait_processed(w1, oracle.applied, 180)
        w3.start(wait=False)
        produce(kafka, w1.topic("stock"), restock, key=by_sku)
        for ev in restock:
            oracle.apply("s", ev)
        w3.wait_ready(180)
        for w in (w1, w3):
            w.wait_for("/cluster", lambda b: len(b["workers"]) == 2, timeout_s=90)
        # Settled: both in the group and the input applied (counted over the group).
        wait_processed(w1, oracle.applied, 180)
        settled = time.monotonic()
        answered: dict[str, float] = {}
        for w in (w1, w3):
            # Every SKU, from either worker, equal to the oracle within 15 s.
            deadline = settled + 15
            pending = dict(oracle.levels)
            while pending and time.monotonic() < deadline:
                for sku, level in list(pending.items()):
                    status, body = w.get(f"/stock/{sku}")
                    if status == 200 and body["level"] == level:
                        del pending[sku]
                if pending:
                    time.sleep(0.5)
            assert not pending, f"{w.url}: {len(pending)} SKUs wrong 15 s after settling"
            answered[w.url] = round(time.monotonic() - settled, 1)
        figures = check_results(w1, kafka, oracle)
        # Unkeyed reads cover every partition of every worker, whenever
        # their changelog topics were created (here: a fresh deployment).
        for w in (w1, w3):
            listing = w.get("/stock/?limit=1000")[1]
            assert {i["sku"]: i["level"] for i in listing["items"]} == dict(oracle.levels)
            chart = w.get("/dashboard/windows?limit=1000")[1]["windows"]
            assert sum(win["orders"] for win in chart) == len(oracle.statuses)
        assert w1.proc is not None and w1.proc.poll() is None and w1.starts == 1
        assert w3.proc is not None and w3.proc.poll() is None and w3.starts == 1
        # SIGTERM in normal operation (the survivor then takes its partitions): within 10 s.
        sent = time.monotonic()
        w3.stop()
        sigterm_s = time.monotonic() - sent
        assert sigterm_s < 10, sigterm_s
        figures.update(
            partitions=8,
            sigterm_to_exit_s=round(sigterm_s, 1),
            processed_when_w2_killed=killed_at,
            seconds_to_answer_every_sku=answered,
            worker_exits_on_their_own=0,
        )
        record("worker-churn", figures)
    finally:
        for w in (w1, w2, w3):
            w.stop()


async def _fence(bootstrap: str, transactional_ids: list[str]) -> int:
    """Start a producer with each id, as a new owner of the id would: every older
    producer of it is fenced. Returns how many ids were taken over."""
    taken = 0
    for tid in transactional_ids:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
        await producer.start()
        taken += 1
        await producer.stop()
    return taken


def test_fenced_producers_are_replaced_not_fatal(worker_factory: Any, kafka: str) -> None:
    """Every transactional producer of a running worker fenced at once (what a second
    worker starting with the same ids does): the worker replaces them and goes on."""
    initial, stream, _ = make_events(seed=41, skus=60, orders=1_500)
    oracle = Oracle()
    worker: Worker = worker_factory()
    worker.start()
    produce(kafka, worker.topic("stock"), initial, key=by_sku)
    for ev in initial:
        oracle.apply("s", ev)
    wait_processed(worker, oracle.applied, 90)
    # Faust's ids are <app id>-<topic group>-<partition>; a few groups cover them all.
    # Ingest's producers add "-in" (app/engine/producer.py: own_producers).
    ids = [
        f"{worker.app_id}-{group}-{p}{suffix}"
        for group in range(4)
        for p in range(4)
        for suffix in ("", "-in")
    ]
    assert asyncio.run(_fence(kafka, ids)) == len(ids)
    produce(kafka, worker.topic("orders"), stream, key=by_sku)
    for ev in stream:
        oracle.apply("o", ev)
    figures = check_results(worker, kafka, oracle)
    assert worker.proc is not None and worker.proc.poll() is None and worker.starts == 1
    assert worker.log_path is not None
    replaced = worker.log_path.read_text().count("Started a new transactional producer")
    assert replaced > 0
    wait_health(worker, 200, timeout_s=30)
    figures.update(fenced_ids=len(ids), producers_replaced=replaced, worker_restarts=0)
    record("fenced", figures)
