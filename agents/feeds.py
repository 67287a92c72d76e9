"""Feeds: tables fed from the app's own output topics (read_committed).

``dead-letters`` is written by ingest for many input partitions at once; counting it here,
from the topic itself, keeps the count exact without tying ingest to table partitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import orjson

from app.domain.events import format_ts
from app.domain.rules.dead_letters import count_dead_letter, empty_summary
from app.engine import topics
from app.engine.instance import app, settings
from app.engine.restore import Restorer
from app.engine.stores import get
from app.engine.transaction import Batch, CommitAbandoned, commit
from tables import dead_letter_stats

restorer = Restorer(
    topics.dead_letters.get_topic_name(), (dead_letter_stats,), settings.broker_host_ports
)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
    restorer.forget(tp.partition for tp in revoked if tp.topic == restorer.topic)


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
    restorer.settle(tp.partition for tp in assigned if tp.topic == restorer.topic)


@app.agent(topics.dead_letters, name="dead-letter-stats")
async def count_dead_letters(stream: AsyncIterable[Any]) -> None:
    """dead-letters -> dead-letter-stats (count and the latest few, per partition)."""
    take = stream.take_events(settings.batch_size, within=settings.batch_window_s)  # type: ignore[attr-defined]
    async for events in take:
        by_partition: dict[int, list[Any]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        # One read, one write and one transaction per partition per batch.
        for partition, group in by_partition.items():
            while not await restorer.ensure(partition):
                pass
            key = b"p%d" % partition
            raw = get(dead_letter_stats, key, partition)
            summary = orjson.loads(raw) if raw else empty_summary()
            batch = Batch(table_partition=partition)
            for event in group:
                message = event.message
                count_dead_letter(summary, _letter(message.value), _when(message.timestamp))
                batch.consumed(message.tp, message.offset)
            batch.put(dead_letter_stats, key, orjson.dumps(summary))
            try:
                if not await commit(batch, source=group[0].message.tp):
                    restorer.forget([partition])  # reassigned meanwhile: restore it
            except CommitAbandoned:
                # Retried through an outage until the partition left this worker.
                restorer.forget([partition])


def _letter(value: bytes | None) -> Any:
    """The decoded dead letter, or None for what is not one (anyone can write to the
    topic; count_dead_letter ignores what is not a dead letter)."""
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None


def _when(timestamp: float) -> str:
    # A producer picks the Kafka timestamp of what it writes, up to year 292 million.
    try:
        return format_ts(timestamp)
    except ValueError:
        return ""
