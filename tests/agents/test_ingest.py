"""The ingest agent's batch function: raw input records in, envelopes and dead letters out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP

from agents import ingest
from app import topics

ORDERS = topics.orders.get_topic_name()
STOCK = topics.stock.get_topic_name()
ENVELOPES = topics.events_by_sku.get_topic_name()
DEAD = topics.dead_letters.get_topic_name()


def record(
    topic: str, partition: int, offset: int, value: Any, key: bytes | None = None, ts_ms: int = 0
) -> Any:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, key=key, value=raw, timestamp=ts_ms
    )


def order(oid: str, sku: str) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer_id": "c",
        "sku": sku,
        "quantity": 2,
        "unit_price": 1.5,
        "ts": "2026-11-26T12:00:00Z",
    }


def test_valid_events_are_routed_by_sku_and_bad_ones_dead_lettered() -> None:
    move = {"event_id": "e1", "sku": "A", "reason": "delivery", "quantity": 5, "ts": 1_795_694_400}
    batches = ingest.build_batches(
        {
            TP(ORDERS, 1): [
                record(ORDERS, 1, 10, order("o1", "A"), ts_ms=100),
                record(ORDERS, 1, 11, b"{not json", key=b"k", ts_ms=200),
                record(ORDERS, 1, 12, order("o2", "B"), ts_ms=300),
            ],
            TP(STOCK, 1): [record(STOCK, 1, 7, move, ts_ms=250)],
        }
    )
    # Outside a running worker there is one producer, so one batch holds everything.
    [(source, batch)] = batches.values()
    assert source.partition == 1
    assert batch.sources == {TP(ORDERS, 1): 13, TP(STOCK, 1): 8}
    envelopes = [(p, orjson.loads(v)) for t, _, v, p in batch.outputs if t == ENVELOPES]
    by_sku: dict[str, list[Any]] = {}
    for partition, rows in envelopes:
        for row in rows:
            sku = row[4] if row[0] == "o" else row[3]
            assert partition == topics.sku_partition(sku)
            by_sku.setdefault(sku, []).append((row[0], row[1], row[-1]))
    # Kind, input offset and input partition; one SKU's events keep their order.
    assert by_sku["A"] == [("o", 10, 1), ("s", 7, 1)]
    dead = [orjson.loads(v) for t, _, v, _ in batch.outputs if t == DEAD]
    assert len(dead) == 1
    assert dead[0]["source_topic"] == ORDERS
    assert (dead[0]["partition"], dead[0]["offset"], dead[0]["key"]) == (1, 11, "k")
    assert dead[0]["value"] == "{not json" and dead[0]["error"]


def test_an_envelope_never_holds_more_than_its_row_limit() -> None:
    n = ingest.ENVELOPE_ROWS + 5
    batches = ingest.build_batches(
        {TP(ORDERS, 0): [record(ORDERS, 0, i, order(f"o{i}", "SAME")) for i in range(n)]}
    )
    [(_, batch)] = batches.values()
    sizes = [len(orjson.loads(v)) for t, _, v, _ in batch.outputs if t == ENVELOPES]
    assert sizes == [ingest.ENVELOPE_ROWS, 5]
    rows = [r for t, _, v, _ in batch.outputs if t == ENVELOPES for r in orjson.loads(v)]
    assert [r[1] for r in rows] == list(range(n))  # offset order across envelopes


def test_orders_and_stock_moves_of_one_fetch_are_applied_in_production_order() -> None:
    move = {"event_id": "e1", "sku": "A", "reason": "delivery", "quantity": 5, "ts": 1_795_694_400}
    batches = ingest.build_batches(
        {
            TP(ORDERS, 0): [
                record(ORDERS, 0, 0, order("o1", "A"), ts_ms=100),
                record(ORDERS, 0, 1, order("o2", "A"), ts_ms=300),
            ],
            TP(STOCK, 0): [record(STOCK, 0, 0, move, ts_ms=200)],
        }
    )
    [(_, batch)] = batches.values()
    [rows] = [orjson.loads(v) for t, _, v, _ in batch.outputs if t == ENVELOPES]
    assert [row[2] for row in rows] == ["o1", "e1", "o2"]
