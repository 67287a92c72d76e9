"""``seen-ids``: the duplicate memory, one key per (SKU, order_id or event_id), and its
expiry index.

Key ``<o|s>/<sku>\\x1f<id>`` (``seen_key``), value ``[ts, source_topic, partition,
offset]``: when and where the id was first seen.
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


def ts_of(value: bytes) -> float:
    """When the id was seen (its entry's first field)."""
    ts: float = orjson.loads(value)[0]
    return ts


index_with(seen_ids, EXPIRY, "expiry-1", EXPIRY_INDEX.derive(ts_of))


def seen_key(kind: str, sku: str, event_id: str) -> bytes:
    """The key of an id seen for a SKU: ``<kind>/<sku>\\x1f<id>``.

    A SKU may itself hold ``\\x1f`` (the contract allows any 1-64 characters); then the
    separator no longer tells SKU and id apart (``a\\x1fb`` + ``c`` against ``a`` +
    ``b\\x1fc``), and such a SKU's key is ``<kind>!<length of the SKU in bytes>:<sku><id>``
    instead. The usual form is kept for every other SKU, so stores written before this
    read the same.
    """
    sku_b = sku.encode()
    if b"\x1f" in sku_b:
        return b"%s!%d:%s%s" % (kind.encode(), len(sku_b), sku_b, event_id.encode())
    return b"%s/%s\x1f%s" % (kind.encode(), sku_b, event_id.encode())
