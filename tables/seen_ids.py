"""``seen-ids``: the duplicate memory, one key per (SKU, order_id or event_id), and its
expiry index.

Key ``<o|s>/<sku>\\x1f<id>``, value ``[ts, source_topic, partition, offset]``: when and
where the id was first seen.
Entries leave once stream time passes ``ts + DEDUPE_SECONDS``. To find them without a
heap in memory, each entry implies a local key ordered by its ts (``EXPIRY_INDEX``),
written with it by the store on every path (app/engine/stores.py, ``index_with``), so a
restore or a standby keeps the index too. An index key outlives an entry that was
deleted or renewed: the expiry reads the entry before deleting it.
"""

from __future__ import annotations

import orjson

from app.engine.stores import LOCAL_PREFIX, index_with
from tables.base import TimeIndex, raw_table

seen_ids = raw_table("seen-ids", "order/event id per SKU -> when and where it was first seen")

EXPIRY = LOCAL_PREFIX + b"e"
EXPIRY_INDEX = TimeIndex(EXPIRY)
index_with(seen_ids, EXPIRY, "expiry-1", EXPIRY_INDEX.derive(lambda value: orjson.loads(value)[0]))
