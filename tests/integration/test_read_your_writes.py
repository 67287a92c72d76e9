"""Read your own writes (``GET /orders/{id}?wait=S``) and the published schemas, for real.

Two workers in one group. A request for an order not produced yet waits; the test
produces the order only once the worker reports the request as waiting
(``stock_tracker_waiting_requests``), so the answer can only come from the wait.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from jsonschema import Draft202012Validator

from app.domain import schemas
from tests.integration.harness import Worker, faust_cli, produce, read_topic

pytestmark = pytest.mark.integration

PARTITIONS = 4
T0 = 1_795_694_400


def partition_of(sku: str) -> int:
    return (murmur2(sku.encode()) & 0x7FFFFFFF) % PARTITIONS


def call(worker: Worker, path: str, timeout: float = 60) -> tuple[int, Any, dict[str, str], float]:
    """GET with a long client timeout: (status, JSON body, headers, seconds taken)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(worker.url + path, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    return status, orjson.loads(raw), headers, time.monotonic() - started


def waiting(worker: Worker) -> int:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("stock_tracker_waiting_requests "):
            return int(float(line.split()[1]))
    raise AssertionError("no stock_tracker_waiting_requests in /metrics")


def until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


class Ask(threading.Thread):
    """One HTTP request in the background."""

    def __init__(self, worker: Worker, path: str) -> None:
        super().__init__(daemon=True)
        self.worker, self.path = worker, path
        self.answer: tuple[int, Any, dict[str, str], float] | None = None

    def run(self) -> None:
        self.answer = call(self.worker, self.path)

    def result(self) -> tuple[int, Any, dict[str, str], float]:
        self.join(60)
        assert self.answer is not None, f"no answer to {self.path}"
        return self.answer


def order(order_id: str, sku: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "c",
        "sku": sku,
        "quantity": 1,
        "unit_price": 2.5,
        "ts": T0,
    }


def owners(worker: Worker) -> dict[int, str]:
    _, body = worker.get("/cluster")
    return {p: w["url"] for w in body["workers"] for p in w["partitions"]}


def test_wait_answers_from_any_worker_once_the_order_commits(
    worker_factory: Any, tmp_path: Path
) -> None:
    w1: Worker = worker_factory(MAX_WAITING_REQUESTS="3")
    w1.start()
    w2: Worker = worker_factory(app_id=w1.app_id, MAX_WAITING_REQUESTS="3")
    w2.start()
    both = lambda b: len(b["workers"]) == 2 and all(w["partitions"] for w in b["workers"])  # noqa: E731
    for w in (w1, w2):
        w.wait_for("/cluster", both, timeout_s=90)
    owner_url = owners(w1)
    assert owner_url == owners(w2)
    skus = [f"W-{i:02d}" for i in range(40)]
    sku_of = {
        w.url: next(s for s in skus if owner_url[partition_of(s)] == w.url) for w in (w1, w2)
    }

    # From either worker, for an order of either worker's SKU: with and without ?sku.
    n = 0
    for asker in (w1, w2):
        for owner in (w1, w2):
            for with_sku in (False, True):
                n += 1
                sku = sku_of[owner.url]
                oid = f"rw-{n}"
                assert call(asker, f"/orders/{oid}")[0] == 404
                query = f"?wait=20&sku={sku}" if with_sku else "?wait=20"
                ask = Ask(asker, f"/orders/{oid}{query}")
                ask.start()
                # The owner holds the request (asked directly, forwarded with ?sku, or
                # asked in parallel without it) before the order is produced.
                until(lambda o=owner: waiting(o) >= 1)
                produce(w1.bootstrap, w1.topic("orders"), [order(oid, sku)])
                status, body, headers, took = ask.result()
                assert status == 200, body
                assert (body["order_id"], body["sku"], body["status"]) == (oid, sku, "backordered")
                assert headers["X-Served-By"] == owner.url
                assert took < 20
                # The other copies of the request (forwarded ones) end with it.
                until(lambda: waiting(w1) == 0 and waiting(w2) == 0)

    # An order that never comes: 404, and only after the wait.
    for asker in (w1, w2):
        status, body, _, took = call(asker, "/orders/never-1?wait=1.5")
        assert status == 404 and "never-1" in body["error"]
        assert took >= 1.5
    # A bad wait is a 400, whether or not the order exists.
    for oid in ("rw-1", "never-2"):
        for bad in ("0", "-1", "30.5", "abc", "nan", "inf", ""):
            status, body, _, _ = call(w1, f"/orders/{oid}?wait={bad}")
            assert status == 400 and "wait" in body["error"], (oid, bad, body)
    assert call(w1, "/orders/rw-1?wait=30")[0] == 200

    # Past MAX_WAITING_REQUESTS (3 here): 503 at once, with a clear error.
    holders = [Ask(w1, f"/orders/held-{i}?wait=20") for i in range(3)]
    for h in holders:
        h.start()
    until(lambda: waiting(w1) == 3)
    status, body, _, took = call(w1, "/orders/held-x?wait=20")
    assert status == 503 and "MAX_WAITING_REQUESTS" in body["error"], body
    assert took < 10
    # The held requests still get their orders.
    produce(w1.bootstrap, w1.topic("orders"), [order(f"held-{i}", skus[i]) for i in range(3)])
    assert [h.result()[0] for h in holders] == [200, 200, 200]
    until(lambda: waiting(w1) == 0 and waiting(w2) == 0)


def test_schemas_are_served_and_match_what_the_worker_accepts_and_writes(
    worker: Worker, tmp_path: Path
) -> None:
    status, index, _, _ = call(worker, "/schemas")
    assert status == 200
    assert index["inputs"] == ["orders", "stock"]
    assert set(index["outputs"]) == {
        "order-status",
        "stock-levels",
        "supplier-orders",
        "expedites",
        "window-results",
        "dead-letters",
    }
    served = {}
    for topic, path in index["schemas"].items():
        status, body, _, _ = call(worker, path)
        assert status == 200 and body == schemas.schema(topic)
        Draft202012Validator.check_schema(body)
        served[topic] = Draft202012Validator(body)
    status, body, _, _ = call(worker, "/schemas/nope")
    assert status == 404 and "nope" in body["error"]

    good = [order(f"s-{i}", f"S-{i % 3}") for i in range(12)]
    good += [
        {"event_id": f"d-{i}", "sku": f"S-{i}", "reason": "delivery", "quantity": 5, "ts": T0}
        for i in range(3)
    ]
    bad = [
        {**order("bad-1", "S-0"), "quantity": 0},
        {**order("bad-2", "S-0"), "sku": ""},
        {"event_id": "bad-3", "sku": "S-0", "reason": "theft", "quantity": 1, "ts": T0},
    ]
    for value in good:
        topic = "orders" if "order_id" in value else "stock"
        assert served[topic].is_valid(value)
    for value in bad:
        topic = "orders" if "order_id" in value else "stock"
        assert not served[topic].is_valid(value)

    # inject --validate reports each bad line and produces nothing.
    lines = [{"topic": "orders" if "order_id" in v else "stock", "value": v} for v in good + bad]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    checked = faust_cli(worker.env(), "inject", "--file", str(path), "--validate")
    assert checked.returncode == 1, checked.stderr
    reported = [ln for ln in checked.stdout.splitlines() if ln.startswith(str(path))]
    assert [ln.split(":")[1] for ln in reported] == ["16", "17", "18"], checked.stdout
    assert "quantity" in reported[0] and "sku" in reported[1] and "reason" in reported[2]
    assert "3 bad" in checked.stdout

    # The worker accepts exactly the schema-valid ones; every output matches its schema.
    produce(worker.bootstrap, worker.topic("orders"), [v for v in good + bad if "order_id" in v])
    produce(worker.bootstrap, worker.topic("stock"), [v for v in good + bad if "event_id" in v])
    stats = worker.wait_for("/stats", lambda b: b["processed"] + b["dead_lettered"] >= len(lines))
    assert (stats["processed"], stats["dead_lettered"]) == (len(good), len(bad))
    assert len(read_topic(worker.bootstrap, worker.topic("orders"), min_count=1)) == 14
    written = 0
    for topic in schemas.OUTPUT_TOPICS:
        for _key, value in read_topic(worker.bootstrap, worker.topic(topic), idle_s=1.0):
            errors = [e.message for e in served[topic].iter_errors(value)]
            assert not errors, (topic, value, errors)
            written += 1
    assert written >= len(good) + len(bad)
