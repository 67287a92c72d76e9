"""Hostile input, fuzzed: thousands of bad messages among valid ones, against one worker.

A seeded generator writes more than 2,000 messages that each break a rule of the input
contract (bad JSON, not UTF-8, wrong types, missing fields, numbers out of range, huge
strings, times in year 9999 or before 2000, nested junk, null values, keys of every
kind, and a few values of 200-900 KB) to both input topics, interleaved with valid
orders and stock moves (some re-sent, some valid but odd: huge extra fields, edge
values). Then:

- every invalid message is dead-lettered exactly once (``dead-letters`` read
  read_committed, matched by source topic, partition and offset), and every dead
  letter is one of them and within the size bound;
- every valid message is applied exactly: levels, order statuses and supplier orders
  equal the oracle of tests/integration/test_exactly_once.py (written from the
  contract alone), the re-sent ones count as duplicates;
- ``/health`` answers 200 throughout, and the worker is alive at the end with no
  traceback in its log.

Valid events of one SKU all go, keyed by SKU, to one partition of one topic per phase,
and each phase is processed before the next is written, so the order they are
applied in is the order they were written whatever the join's ordering rule.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.harness import REPO, Worker
from tests.integration.oracle import Oracle

pytestmark = pytest.mark.integration

SEED = 20261130
SKUS = 60
MAX_DEAD_LETTER_BYTES = 128 * 1024  # the bound app/domain/rules/dead_letters.py promises
VALUE_LIMIT = 16 * 1024
Message = tuple[bytes | None, bytes | None]  # (key, value)
WRONG_TYPES: dict[str, list[Any]] = {
    "id": [None, True, [], {}, 17, 2.5, ["x"], {"id": "x"}],
    "quantity": [None, True, False, "3", 2.5, 2.0, [], {}, [3]],
    "ts": [None, True, [], {}, {"s": 1}, ["2026-11-26T12:00:00Z"]],
    "unit_price": [None, True, False, "2", "19.99", [], {}],
    "reason": [None, True, 7, [], {}, ["delivery"]],
}
"""Values of a wrong JSON type per field (never one the field accepts)."""


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


@dataclass
class Fuzz:
    """The seeded generator: valid events (with the oracle) and hostile messages."""

    rng: random.Random
    t0: float
    skus: list[str]
    n: int = 0
    oracle: Oracle = field(default_factory=Oracle)
    recent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def ts(self) -> Any:
        """A valid ts, in one of the contract's formats, later than the last one."""
        self.n += 1
        ts = self.t0 + self.n * 0.5
        style = self.rng.random()
        if style < 0.6:
            return iso(ts)
        if style < 0.8:
            return ts
        if style < 0.9:
            return int(ts) if ts.is_integer() else ts
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts + 3600))
        return local + f".{int(ts % 1 * 1000):03d}+01:00"

    # -- valid events --------------------------------------------------------------

    def extras(self) -> dict[str, Any]:
        r = self.rng.random()
        if r < 0.9:
            return {}
        if r < 0.95:
            return {"note": "x" * self.rng.randint(1, 5000), "tags": [1, {"a": None}]}
        return {"junk": [[[[{"deep": "é" * 100}]]]], "quantity_note": True}

    def order(self, sku: str, quantity: int | None = None) -> dict[str, Any]:
        value = {
            "order_id": f"o-{self.n}-" + self.rng.choice(["", "é", "Ω", "🙂"]),
            "customer_id": self.rng.choice([f"c{self.rng.randint(1, 99)}", "ü" * 64]),
            "sku": sku,
            "quantity": quantity if quantity is not None else self.rng.randint(1, 6),
            "unit_price": self.rng.choice([0, 9.99, 19.5, 1_000_000, 0.01, 5]),
            "ts": self.ts(),
            **self.extras(),
        }
        self.oracle.apply("o", value)
        self.recent.append(("orders", value))
        return value

    def move(self, sku: str, reason: str, quantity: int) -> dict[str, Any]:
        value: dict[str, Any] = {
            "event_id": f"s-{self.n}",
            "sku": sku,
            "reason": reason,
            "quantity": quantity,
            "ts": self.ts(),
            **self.extras(),
        }
        supplier = self.rng.random()
        if supplier < 0.3:
            value["supplier_id"] = self.rng.choice(["", "acme", "s" * 64, None])
        self.oracle.apply("s", value)
        self.recent.append(("stock", value))
        return value

    def resend(self) -> tuple[str, dict[str, Any]]:
        """A valid event sent again (a producer retry): a duplicate."""
        topic, value = self.rng.choice(self.recent[-50:])
        self.oracle.apply("o" if topic == "orders" else "s", value)
        return topic, value

    # -- hostile messages ------------------------------------------------------------

    def base(self, topic: str) -> dict[str, Any]:
        sku = self.rng.choice(self.skus)
        if topic == "orders":
            return {
                "order_id": f"bad-{self.rng.random()}",
                "customer_id": "c1",
                "sku": sku,
                "quantity": 2,
                "unit_price": 1.5,
                "ts": iso(self.t0),
            }
        return {
            "event_id": f"bad-{self.rng.random()}",
            "sku": sku,
            "reason": "delivery",
            "quantity": 5,
            "ts": iso(self.t0),
        }

    def hostile_value(self, topic: str) -> bytes | None:
        """One value that breaks at least one input rule, chosen at random."""
        kind = self.rng.randrange(12)
        value = self.base(topic)
        ids = ("order_id", "customer_id", "sku") if topic == "orders" else ("event_id", "sku")
        if kind == 0:  # bad JSON of many shapes
            text = orjson.dumps(value)
            return self.rng.choice(
                [
                    text[: self.rng.randrange(1, len(text) - 1)],
                    text + b"}",
                    text.replace(b'"', b"'"),
                    b"\x00" + bytes(self.rng.randrange(256) for _ in range(40)),
                    b"{" * 5000,
                    b"[" * 100_000 + b"]" * 100_000,
                    text.replace(b'"quantity":', b'"quantity":NaN,"x":'),
                    text.replace(b'"quantity":', b'"quantity":1e400,"x":'),
                ]
            )
        if kind == 1:  # not UTF-8, somewhere
            text = orjson.dumps(value)
            cut = self.rng.randrange(2, len(text) - 2)
            return (
                text[:cut]
                + self.rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])
                + (text[cut:])
            )
        if kind == 2:  # missing field
            name = self.rng.choice(
                [*ids, "quantity", "ts", "unit_price" if topic == "orders" else "reason"]
            )
            del value[name]
            return orjson.dumps(value)
        if kind == 3:  # wrong type
            name = self.rng.choice(
                [*ids, "quantity", "ts", "unit_price" if topic == "orders" else "reason"]
            )
            value[name] = self.rng.choice(WRONG_TYPES.get(name, WRONG_TYPES["id"]))
            return json.dumps(value).encode()
        if kind == 4:  # quantity out of range
            value["quantity"] = self.rng.choice(
                [0, -1, 1_000_001, 9007199254740991, -9007199254740991, 2**63 - 1, 1e20, 2.0]
            )
            if topic == "stock" and self.rng.random() < 0.5:
                value["reason"] = "adjustment"
                value["quantity"] = self.rng.choice([0, -1_000_001, 1_000_001, -(2**62)])
            return orjson.dumps(value)
        if kind == 5:  # unit_price out of range (orders), or a bad reason (stock)
            if topic == "orders":
                value["unit_price"] = self.rng.choice(
                    [-0.01, 1_000_000.01, 1.7976931348623157e308, -1, 1_000_001, True]
                )
            else:
                value["reason"] = self.rng.choice(["theft", "Delivery", "", ["delivery"], 7])
            return orjson.dumps(value)
        if kind == 6:  # ids empty or too long (and huge)
            name = self.rng.choice(ids)
            value[name] = self.rng.choice(
                ["", "x" * 65, "é" * 65, "y" * self.rng.randint(100, 200_000)]
            )
            if topic == "stock" and self.rng.random() < 0.3:
                value["supplier_id"] = "s" * 65
            return orjson.dumps(value)
        if kind == 7:  # ts out of the bounds
            value["ts"] = self.rng.choice(
                [
                    253402214400,
                    "9999-12-31T23:59:59Z",
                    946684799,
                    "1999-12-31T23:59:59Z",
                    0,
                    -1,
                    self.t0 * 1000,
                    time.time() + 7200,
                    iso(time.time() + 7200),
                    "yesterday",
                    "2026-02-30T12:00:00Z",
                    1e300,
                ]
            )
            return orjson.dumps(value)
        if kind == 8:  # nested junk
            return orjson.dumps(
                self.rng.choice(
                    [
                        {"order": value},
                        [value],
                        {k: {"v": v} for k, v in value.items()},
                        {"a": [[[[[[{"b": None}]]]]]]},
                    ]
                )
            )
        if kind == 9:  # null and empty values, non-objects
            return self.rng.choice([None, b"", b" \n", b"null", b"[]", b"42", b'"text"', b"true"])
        if kind == 10:  # a valid-looking value with a bad field hidden in extras' company
            value["extra"] = "z" * self.rng.randint(1, 50_000)
            value["quantity"] = -abs(value["quantity"])
            return orjson.dumps(value)
        return self.rng.choice(  # duplicate keys, the last one wrong
            [
                orjson.dumps(value)[:-1] + b',"quantity":"lots"}',
                orjson.dumps(value)[:-1] + b',"ts":null}',
            ]
        )

    def hostile_key(self) -> bytes | None:
        return self.rng.choice(
            [
                None,
                b"",
                self.rng.choice(self.skus).encode(),
                b"\xff\xfe\x00",
                bytes(self.rng.randrange(256) for _ in range(16)),
                "ключ-🙂".encode(),
                b"k" * 2000,
            ]
        )


def big_messages(t0: float) -> list[tuple[str, bytes | None, bytes]]:
    """A few values of 200-900 KB (below the broker's ~1 MB limit)."""
    truncated = orjson.dumps(
        {
            "order_id": "big",
            "customer_id": "c",
            "sku": "SKU-BIG",
            "quantity": 1,
            "unit_price": 1,
            "ts": iso(t0),
            "pad": ["p" * 1000] * 460,
        }
    )[:450_000]
    return [
        ("orders", None, b"\x80" * 900_000),
        ("stock", b"big", b"\x01" * 200_000),
        ("orders", b"\x01" * 300_000, b"\x01" * 500_000),
        *(("orders" if i % 2 else "stock", None, truncated) for i in range(4)),
        ("stock", None, b'{"event_id": "' + "é".encode() * 350_000 + b'"}'),
    ]


class Kafka:
    """A producer that remembers where each message went, and a raw reader."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def produce(
        self, messages: list[tuple[str, bytes | None, bytes | None, int | None]]
    ) -> list[Any]:
        """Send (topic, key, value, Kafka timestamp in ms or None for now) in order;
        return each one's (topic, partition, offset)."""

        async def run() -> list[Any]:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, linger_ms=5, max_request_size=1_048_000
            )
            await producer.start()
            try:
                futures = [
                    await producer.send(topic, value, key=key, timestamp_ms=ts)
                    for topic, key, value, ts in messages
                ]
                done = await asyncio.gather(*futures)
            finally:
                await producer.stop()
            return [(m.topic, m.partition, m.offset) for m in done]

        return asyncio.run(run())

    def read_raw(self, topic: str, count: int, timeout_s: float = 120) -> list[bytes]:
        """Committed values of ``topic`` (read_committed): at least ``count``, then idle."""

        async def run() -> list[bytes]:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                isolation_level="read_committed",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_bytes=50 * 1024 * 1024,
                max_partition_fetch_bytes=2 * 1024 * 1024,
            )
            await consumer.start()
            out: list[bytes] = []
            try:
                deadline = time.monotonic() + timeout_s
                parts = consumer.partitions_for_topic(topic)
                while not parts and time.monotonic() < deadline:
                    await consumer._client.force_metadata_update()
                    parts = consumer.partitions_for_topic(topic)
                    await asyncio.sleep(0.2)
                consumer.assign([TopicPartition(topic, p) for p in sorted(parts or ())])
                last = time.monotonic()
                while time.monotonic() < deadline:
                    got = await consumer.getmany(timeout_ms=200)
                    if got:
                        last = time.monotonic()
                        out.extend(r.value for records in got.values() for r in records)
                    elif len(out) >= count and time.monotonic() - last > 3:
                        break
            finally:
                await consumer.stop()
            return out

        return asyncio.run(run())


class HealthWatch:
    """Polls ``/health`` in a thread; remembers every answer that was not 200 ok."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.polls = 0
        self.bad: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = self.worker.get("/health")
            self.polls += 1
            if answer != (200, {"status": "ok"}):
                self.bad.append(answer)
            self._stop.wait(0.5)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def quoted(raw: bytes | None, limit: int, got: Any) -> str | None:
    """What a dead letter quotes of ``raw``: None, or its first ``limit`` bytes (or up
    to 3 fewer: the cut is at a character boundary) as text; ``got`` picks which."""
    if raw is None:
        return None
    options = [raw[:n].decode("utf-8", errors="replace") for n in range(limit - 3, limit + 1)]
    return got if got in options else options[-1]


def wait_until(worker: Worker, done: Callable[[dict[str, Any]], bool], timeout_s: float) -> Any:
    """Poll ``/stats`` until ``done(stats)``; fail at once if the worker process exits."""
    deadline = time.monotonic() + timeout_s
    body: Any = None
    while time.monotonic() < deadline:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.tail()}")
        status, body = worker.get("/stats")
        if status == 200 and done(body):
            return body
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting on /stats; last answer: {body}\n{worker.tail()}")


def test_fuzzed_hostile_input_is_dead_lettered_once_and_valid_input_applied_exactly(
    worker_factory: Any, kafka: str
) -> None:
    rng = random.Random(SEED)
    now = time.time()
    t0 = math.floor(now) - 6 * 3600  # every valid ts is between t0 and now
    skus = [f"SKU-{i:03d}" for i in range(SKUS - 3)] + ["é-sku", "🙂", "s" * 64]
    fuzz = Fuzz(rng, t0, skus)
    kafka_io = Kafka(kafka)
    worker: Worker = worker_factory()
    worker.start()
    topic_of = {"orders": worker.topic("orders"), "stock": worker.topic("stock")}

    hostile: dict[tuple[str, int, int], Message] = {}
    valid_sent = 0

    def send(batch: list[tuple[str, bytes | None, bytes | None, bool]]) -> None:
        nonlocal valid_sent
        # Kafka timestamps are the producer's to choose, too: some hostile messages come
        # from the epoch or 1999 (the broker refuses ones more than an hour ahead).
        odd = [0, 1, 946_684_799_000]
        where = kafka_io.produce(
            [
                (topic_of[t], k, v, rng.choice(odd) if bad and rng.random() < 0.1 else None)
                for t, k, v, bad in batch
            ]
        )
        for (_, key, value, bad), position in zip(batch, where, strict=True):
            if bad:
                hostile[position] = (key, value)
            else:
                valid_sent += 1

    def with_hostile(
        valid: list[tuple[str, dict[str, Any]]], count: int
    ) -> list[tuple[str, bytes | None, bytes | None, bool]]:
        out: list[tuple[str, bytes | None, bytes | None, bool]] = [
            (t, v["sku"].encode(), orjson.dumps(v), False) for t, v in valid
        ]
        for _ in range(count):
            topic = rng.choice(["orders", "stock"])
            at = rng.randrange(len(out) + 1)
            key, value = fuzz.hostile_key(), fuzz.hostile_value(topic)
            if key is None and value is None:  # aiokafka sends no record without both
                key = b"tombstone"
            out.insert(at, (topic, key, value, True))
        return out

    def settle(timeout_s: float = 240) -> dict[str, Any]:
        return wait_until(
            worker,
            lambda s: (
                s["processed"] >= fuzz.oracle.applied
                and s["duplicates"] >= fuzz.oracle.duplicates
                and s["dead_lettered"] >= len(hostile)
            ),
            timeout_s,
        )

    with HealthWatch(worker) as health:
        # Phase A: opening stock (and edge values), among hostile messages.
        opening = [("stock", fuzz.move(s, "delivery", rng.randint(20, 60))) for s in skus]
        opening.append(("stock", fuzz.move(skus[0], "delivery", 1_000_000)))
        opening.append(("stock", fuzz.move(skus[1], "adjustment", -1_000_000)))
        send(with_hostile(opening, 700))
        send([(t, k, v, True) for t, k, v in big_messages(t0)])
        settle()

        # Phase B: orders, with re-sent duplicates, among hostile messages.
        orders: list[tuple[str, dict[str, Any]]] = []
        for i in range(900):
            sku = skus[min(int(rng.paretovariate(1.1)) - 1, len(skus) - 1)]
            orders.append(("orders", fuzz.order(sku, 1_000_000 if i % 300 == 7 else None)))
            if rng.random() < 0.03:
                topic, value = fuzz.resend()
                orders.append((topic, value))
        send(with_hostile(orders, 800))
        settle()

        # Phase C: restock, returns and adjustments, among hostile messages.
        restock = [("stock", fuzz.move(s, "delivery", rng.randint(10, 90))) for s in skus]
        restock += [("stock", fuzz.move(s, "return", 1)) for s in skus[:20]]
        restock += [
            ("stock", fuzz.move(s, "adjustment", rng.choice([-3, 4]))) for s in skus[20:40]
        ]
        restock += [fuzz.resend() for _ in range(10)]
        send(with_hostile(restock, 600))
        stats = settle()

        assert len(hostile) >= 2_000
        letters_raw = kafka_io.read_raw(worker.topic("dead-letters"), len(hostile))
        statuses_raw = kafka_io.read_raw(worker.topic("order-status"), len(fuzz.oracle.statuses))

    # The worker is alive and well, and /health said so throughout.
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    assert health.polls > 5 and not health.bad, health.bad[:5]
    assert worker.log_path is not None
    assert "Traceback" not in worker.log_path.read_text(errors="replace"), worker.tail(200)

    # Every invalid message dead-lettered exactly once, nothing else, each one bounded.
    assert max(len(raw) for raw in letters_raw) <= MAX_DEAD_LETTER_BYTES
    letters = [orjson.loads(raw) for raw in letters_raw]
    by_source = Counter((d["source_topic"], d["partition"], d["offset"]) for d in letters)
    assert {k: n for k, n in by_source.items() if n > 1} == {}
    assert set(by_source) == set(hostile)
    for letter in letters:
        key, value = hostile[(letter["source_topic"], letter["partition"], letter["offset"])]
        assert letter["value_bytes"] == (0 if value is None else len(value))
        assert letter["value"] == quoted(value, VALUE_LIMIT, letter["value"])
        assert letter["key_bytes"] == (0 if key is None else len(key))
        assert letter["key"] == quoted(key, 1024, letter["key"])
        assert isinstance(letter["error"], str) and 0 < len(letter["error"]) <= 1000

    # Every valid event applied exactly: the counts, the levels, the statuses.
    assert stats["processed"] == fuzz.oracle.applied
    assert stats["duplicates"] == fuzz.oracle.duplicates
    assert stats["dead_lettered"] == len(hostile)
    for sku, level in fuzz.oracle.levels.items():
        status, body = worker.get("/stock/" + urllib.parse.quote(sku, safe=""))
        assert status == 200 and body["level"] == level, (sku, body)
        open_so = fuzz.oracle.open_so.get(sku)
        got_open = body["open_supplier_order"]
        assert (got_open and got_open["supplier_order_id"]) == (
            open_so and open_so["supplier_order_id"]
        ), sku
    statuses = [orjson.loads(raw) for raw in statuses_raw]
    per_order = Counter(v["order_id"] for v in statuses)
    assert {k: n for k, n in per_order.items() if n > 1} == {}
    assert set(per_order) == set(fuzz.oracle.statuses)
    for v in statuses:
        got = (v["status"], v["backordered_units"], v["level_after"])
        assert got == fuzz.oracle.statuses[v["order_id"]], v

    figures = {
        "seed": SEED,
        "hostile_messages": len(hostile),
        "hostile_over_100kb": sum(1 for _, v in hostile.values() if v and len(v) > 100_000),
        "valid_messages": valid_sent,
        "events_applied": fuzz.oracle.applied,
        "duplicates": fuzz.oracle.duplicates,
        "dead_letters": len(letters),
        "largest_dead_letter_bytes": max(len(raw) for raw in letters_raw),
        "health_polls": health.polls,
    }
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "fuzz-test.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
