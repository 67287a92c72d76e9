"""Ingest: validate ``orders`` and ``stock``, dead-letter the bad, regroup the good by SKU.

This is the first half of the join. Input keys are ignored (the contract lets producers
key messages any way); every valid event is routed by the hash of its SKU to the
partition of the internal ``<app>-events-by-sku`` topic that owns the SKU, so both
streams of one SKU meet, in arrival order, in one place (agents/tracker.py).

Events travel in envelopes: one message per (transactional producer, SKU partition) per
batch, a JSON array of compact rows (see ``envelope_row``; the input partition is
appended last), so the tracker pays its per-message cost once per envelope, not
once per event.

Ingest is not a Faust agent: it sees every raw input message, and Faust's per-message
machinery (Message objects, conductor, stream queues, acks) alone capped it near 3.8k
messages/s. The consumer's batch tap (app/consumer.py) hands it each fetch as lists of
raw records per partition instead; it commits the input offsets itself, in the
transaction that writes the envelopes, as before.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Any

import orjson
from faust.types import TP

from app import metrics, topics
from app.consumer import Records, tap
from app.events import DEFAULT_MAX_FUTURE_S, InvalidEvent, parse_order, parse_stock
from app.main import app, settings
from app.rules import dead_letters
from app.transaction import Batch, commit, transactional_id

ORDER = "o"
STOCK = "s"


def envelope_row(
    is_order: bool,
    offset: int,
    raw: bytes | None,
    now: float | None = None,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
) -> tuple[str, list[Any]]:
    """Parse one input message (an order, else a stock move) into (sku, compact row).

    ``now``: the worker's clock, for the bound on ``ts`` (app/events.py). Raises
    InvalidEvent.
    """
    if is_order:
        o = parse_order(raw, now, max_future_s)
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
    s = parse_stock(raw, now, max_future_s)
    return s.sku, [STOCK, offset, s.event_id, s.sku, s.reason, s.quantity, s.supplier_id, s.ts]


def dead_letter(message: Any, error: str) -> bytes:
    """The ``dead-letters`` value for a rejected message (a record or a Faust message),
    bounded in size (app/rules/dead_letters.py)."""
    return dead_letters.dead_letter(
        message.topic, message.partition, message.offset, message.key, message.value, error
    )


ENVELOPE_ROWS = 2_000
"""Most rows per envelope (~250 kB with ordinary ids)."""

ENVELOPE_BYTES = 512 * 1024
"""Most bytes per envelope: a row of 64-character ids of escaped characters is ~1.5 kB,
so a full envelope of them would pass Kafka's 1 MB limit; it is split instead."""


def envelopes(rows: list[list[Any]]) -> list[bytes]:
    """``rows`` as envelopes of at most ENVELOPE_ROWS rows and ENVELOPE_BYTES bytes,
    in order. A part that comes out too large is halved until it fits (a row is ~2 kB
    at most, app/events.py bounds every field)."""
    out: list[bytes] = []
    for i in range(0, len(rows), ENVELOPE_ROWS):
        _split_into(rows[i : i + ENVELOPE_ROWS], out)
    return out


def _split_into(rows: list[list[Any]], out: list[bytes]) -> None:
    encoded = orjson.dumps(rows)
    if len(encoded) <= ENVELOPE_BYTES or len(rows) == 1:
        out.append(encoded)
        return
    half = len(rows) // 2
    _split_into(rows[:half], out)
    _split_into(rows[half:], out)


def build_batches(records: Records) -> dict[str, tuple[TP, Batch]]:
    """Group one fetch of input records into one Batch per transactional producer.

    Within a batch, records of the two input topics are merged by their Kafka timestamp
    (each partition's own records stay in offset order), so an order and a stock move
    of one SKU that arrive in one fetch are applied in the order they were produced.
    """
    by_tid: dict[str, tuple[TP, Batch]] = {}
    inputs: dict[str, list[list[tuple[int, Any]]]] = {}
    in_transaction = app.in_transaction
    for tp, batch_records in records.items():
        if not batch_records:
            continue
        tid = transactional_id(tp) if in_transaction else ""
        if tid not in by_tid:
            by_tid[tid] = (tp, Batch())
            inputs[tid] = []
        by_tid[tid][1].consumed(tp, batch_records[-1].offset)
        inputs[tid].append([(tp.partition, r) for r in batch_records])
    dl_topic = topics.dead_letters.get_topic_name()
    orders_topic = topics.orders.get_topic_name()
    target_topic = topics.events_by_sku.get_topic_name()
    sku_partition = topics.sku_partition
    # One clock reading per fetch: the bound on ts is the worker's clock (the contract).
    now = time.time()
    max_future_s = settings.max_future_seconds
    for tid, lists in inputs.items():
        batch = by_tid[tid][1]
        by_partition: dict[int, list[list[Any]]] = {}
        merged = lists[0] if len(lists) == 1 else heapq.merge(*lists, key=_timestamp)
        for source_partition, record in merged:
            try:
                sku, row = envelope_row(
                    record.topic == orders_topic, record.offset, record.value, now, max_future_s
                )
            except InvalidEvent as exc:
                batch.emit(dl_topic, None, dead_letter(record, str(exc)))
                continue
            except Exception as exc:  # a value no rule foresaw: still only its own fault
                batch.emit(dl_topic, None, dead_letter(record, unforeseen(record, exc)))
                continue
            row.append(source_partition)
            target = sku_partition(sku)
            found = by_partition.get(target)
            if found is None:
                by_partition[target] = [row]
            else:
                found.append(row)
        for partition, evs in by_partition.items():
            for envelope in envelopes(evs):
                batch.emit(target_topic, None, envelope, partition)
    return by_tid


def unforeseen(record: Any, exc: Exception) -> str:
    """The dead letter's reason for a message the parser failed on without InvalidEvent
    (a bug, not the producer's fault; logged). Still only this message is rejected: the
    contract's "no input stops the worker"."""
    app.log.warning(
        "Dead-lettered %s[%s]@%s: unexpected %r while parsing",
        record.topic,
        record.partition,
        record.offset,
        exc,
    )
    return f"could not be processed: {type(exc).__name__}: {exc}"


def _timestamp(item: tuple[int, Any]) -> int:
    timestamp: int = item[1].timestamp
    return timestamp


async def ingest(records: Records, current: Callable[[], bool]) -> None:
    """orders + stock -> events-by-sku (valid) or dead-letters (invalid), one fetch at once.

    One transaction per transactional producer; they are independent, so they commit
    concurrently.
    """
    newest_ts = metrics.count_input(records)
    if not current():
        return  # a rebalance began: Faust seeks back to the committed offsets
    commits = []
    for source, batch in build_batches(records).values():
        batch.newest_input_ts = newest_ts
        commits.append(commit(batch, source=source))
    await asyncio.gather(*commits)


for _topic in (topics.orders, topics.stock):
    # Subscribed without a stream: the consumer hands its records to ``ingest``.
    app.topics.add(_topic)
    tap(_topic.get_topic_name(), ingest)
