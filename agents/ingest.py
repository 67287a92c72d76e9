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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from faust.types import TP

from app import metrics, topics
from app.consumer import Records, tap
from app.events import InvalidEvent, parse_order, parse_stock
from app.main import app
from app.transaction import Batch, CommitAbandoned, commit, transactional_id

ORDER = "o"
STOCK = "s"


def envelope_row(is_order: bool, offset: int, raw: bytes | None) -> tuple[str, list[Any]]:
    """Parse one input message (an order, else a stock move) into (sku, compact row).

    Raises InvalidEvent.
    """
    if is_order:
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
    """The ``dead-letters`` value for a rejected message (a record or a Faust message):
    where it was, what, and why."""

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


ENVELOPE_ROWS = 2_000
"""Most rows per envelope: ~500 kB even with 64-character ids, below Kafka's 1 MB limit."""


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
    for tid, lists in inputs.items():
        batch = by_tid[tid][1]
        by_partition: dict[int, list[list[Any]]] = {}
        merged = lists[0] if len(lists) == 1 else heapq.merge(*lists, key=_timestamp)
        for source_partition, record in merged:
            try:
                sku, row = envelope_row(record.topic == orders_topic, record.offset, record.value)
            except InvalidEvent as exc:
                batch.emit(dl_topic, None, dead_letter(record, str(exc)))
                continue
            row.append(source_partition)
            target = sku_partition(sku)
            found = by_partition.get(target)
            if found is None:
                by_partition[target] = [row]
            else:
                found.append(row)
        for partition, evs in by_partition.items():
            for i in range(0, len(evs), ENVELOPE_ROWS):
                batch.emit(target_topic, None, orjson.dumps(evs[i : i + ENVELOPE_ROWS]), partition)
    return by_tid


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
        commits.append(commit(batch, source=source, current=current))
    await _all_committed(commits)


async def _all_committed(commits: Sequence[Awaitable[bool]]) -> None:
    """Await every commit; one given up (its partition left this worker during a broker
    outage) is left to Faust, which seeks the partition's next owner to its committed
    offset. Any other failure is raised once all have ended."""
    for result in await asyncio.gather(*commits, return_exceptions=True):
        if isinstance(result, BaseException) and not isinstance(result, CommitAbandoned):
            raise result


for _topic in (topics.orders, topics.stock):
    # Subscribed without a stream: the consumer hands its records to ``ingest``.
    app.topics.add(_topic)
    tap(_topic.get_topic_name(), ingest)
