"""Feeds: tables fed from the app's own output topics (read_committed).

``dead-letters`` is written by ingest for many input partitions at once; counting it here,
from the topic itself, keeps the count exact without tying ingest to table partitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import orjson

from app import topics
from app.main import app
from app.transaction import Batch, commit
from tables import dead_letter_stats
from tables.base import get

RECENT_DEAD_LETTERS = 20


@app.agent(topics.dead_letters, name="dead-letter-stats")
async def count_dead_letters(stream: AsyncIterable[Any]) -> None:
    """dead-letters -> dead-letter-stats (count and the latest few, per partition)."""
    async for event in stream.events():  # type: ignore[attr-defined]
        message = event.message
        key = b"p%d" % message.partition
        raw = get(dead_letter_stats, key, message.partition)
        doc: dict[str, Any] = orjson.loads(raw) if raw else {"count": 0, "recent": []}
        recent: list[Any] = doc["recent"]
        doc["count"] += 1
        doc["recent"] = [orjson.loads(message.value), *recent][:RECENT_DEAD_LETTERS]
        batch = Batch(table_partition=message.partition)
        batch.consumed(message.tp, message.offset)
        batch.put(dead_letter_stats, key, orjson.dumps(doc))
        await commit(batch, source=message.tp)
