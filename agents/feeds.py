"""Feeds: tables fed from the app's own output topics (read_committed).

``dead-letters`` is written by ingest for many input partitions at once; counting it here,
from the topic itself, keeps the count exact without tying ingest to table partitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import orjson

from app import topics
from app.main import app, settings
from app.transaction import Batch, commit
from tables import dead_letter_stats
from tables.base import get
from tables.restore import restore_partition

RECENT_DEAD_LETTERS = 20
_restored: set[int] = set()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
    _restored.difference_update(tp.partition for tp in revoked)


@app.agent(topics.dead_letters, name="dead-letter-stats")
async def count_dead_letters(stream: AsyncIterable[Any]) -> None:
    """dead-letters -> dead-letter-stats (count and the latest few, per partition)."""
    async for event in stream.events():  # type: ignore[attr-defined]
        message = event.message
        if message.partition not in _restored:
            tables = (dead_letter_stats,)
            await restore_partition(tables, message.partition, settings.broker_host_ports)
            _restored.add(message.partition)
        key = b"p%d" % message.partition
        raw = get(dead_letter_stats, key, message.partition)
        doc: dict[str, Any] = orjson.loads(raw) if raw else {"count": 0, "recent": []}
        letter = orjson.loads(message.value)
        # Count each rejected input message once, even if ingest dead-lettered it again
        # after re-reading its input (per input partition, offsets only grow).
        source = f"{letter['source_topic']}/{letter['partition']}"
        watermarks: dict[str, int] = doc.setdefault("watermarks", {})
        if letter["offset"] > watermarks.get(source, -1):
            watermarks[source] = letter["offset"]
            doc["count"] += 1
            doc["recent"] = [letter, *doc["recent"]][:RECENT_DEAD_LETTERS]
        batch = Batch(table_partition=message.partition)
        batch.consumed(message.tp, message.offset)
        batch.put(dead_letter_stats, key, orjson.dumps(doc))
        await commit(batch, source=message.tp)
