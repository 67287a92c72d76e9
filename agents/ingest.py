"""Ingest: validate ``orders`` and ``stock``, dead-letter the bad, regroup the good by SKU.

This is the first half of the join. Input keys are ignored (the contract lets producers
key messages any way); every valid event is routed by the hash of its SKU to the
partition of the internal ``<app>-events-by-sku`` topic that owns the SKU, so both
streams of one SKU meet, in arrival order, in one place (agents/tracker.py).

Events travel in envelopes: one message per (transactional producer, SKU partition) per
batch, a JSON array of compact rows (see ``envelope_row``; the input partition is
appended last), so the tracker pays Faust's per-message cost once per envelope, not
once per event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterable, Sequence
from typing import Any

import orjson
from faust.types import TP, EventT

from app import metrics, topics
from app.events import InvalidEvent, parse_order, parse_stock
from app.main import app, settings
from app.transaction import Batch, commit, transactional_id

ORDER = "o"
STOCK = "s"


def envelope_row(topic: str, offset: int, raw: bytes | None) -> tuple[str, list[Any]]:
    """Parse one input message into (sku, compact row); raises InvalidEvent."""
    if topic == topics.orders.get_topic_name():
        o = parse_order(raw)
        return o.sku, [
            ORDER,
            offset,
            o.order_id,
            o.customer_id,
            o.sku,
            o.quantity,
            str(o.unit_price),
            o.ts,
        ]
    s = parse_stock(raw)
    return s.sku, [STOCK, offset, s.event_id, s.sku, s.reason, s.quantity, s.supplier_id, s.ts]


def dead_letter(message: Any, error: str) -> bytes:
    """The ``dead-letters`` value for a rejected message: where it was, what, and why."""

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode("utf-8", errors="replace")

    return orjson.dumps(
        {
            "source_topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": text(message.key),
            "value": text(message.value),
            "error": error,
        }
    )


def build_batches(events: Sequence[EventT[Any]]) -> dict[str, tuple[TP, Batch]]:
    """Group a take() of input events into one Batch per transactional producer.

    Events keep their arrival order within each envelope, so an order and a stock move
    of one SKU that arrive in one batch are applied in the order they were read.
    """
    by_tid: dict[str, tuple[TP, Batch]] = {}
    rows: dict[str, dict[int, list[list[Any]]]] = defaultdict(lambda: defaultdict(list))
    dl_topic = topics.dead_letters.get_topic_name()
    for event in events:
        message = event.message
        tp = message.tp
        tid = transactional_id(tp) if app.in_transaction else ""
        if tid not in by_tid:
            by_tid[tid] = (tp, Batch())
        batch = by_tid[tid][1]
        batch.consumed(tp, message.offset)
        try:
            sku, row = envelope_row(message.topic, message.offset, message.value)
        except InvalidEvent as exc:
            batch.emit(dl_topic, None, dead_letter(message, str(exc)))
            continue
        row.append(tp.partition)
        rows[tid][topics.sku_partition(sku)].append(row)
    target = topics.events_by_sku.get_topic_name()
    for tid, by_partition in rows.items():
        batch = by_tid[tid][1]
        for partition, evs in by_partition.items():
            batch.emit(target, None, orjson.dumps(evs), partition)
    return by_tid


@app.agent(
    app.topic(
        topics.orders.get_topic_name(),
        topics.stock.get_topic_name(),
        key_type=bytes,
        value_type=bytes,
    ),
    name="ingest",
)
async def ingest(stream: AsyncIterable[Any]) -> None:
    """orders + stock -> events-by-sku (valid) or dead-letters (invalid)."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_window_s):  # type: ignore[attr-defined]
        newest_ts = metrics.count_input(events)
        for source, batch in build_batches(events).values():
            batch.newest_input_ts = newest_ts
            await commit(batch, source=source)
