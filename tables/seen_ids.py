"""``seen-ids``: the duplicate memory, one key per (SKU, order_id or event_id), and its
expiry index.

Key ``<o|s>/<sku>\\x1f<id>``, value ``[ts, source_topic, partition, offset]``: when and
where the id was first seen.
Entries leave once stream time passes ``ts + DEDUPE_SECONDS``. To find them without a
heap in memory, each entry implies a local key ordered by its ts (:func:`expiry_key`),
written with it by the store on every path (app/engine/stores.py, ``index_with``), so a
restore or a standby keeps the index too. An index key outlives an entry that was
deleted or renewed: the expiry reads the entry before deleting it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import orjson

from app.engine.stores import LOCAL_PREFIX, Write, index_with
from tables.base import raw_table

seen_ids = raw_table("seen-ids", "order/event id per SKU -> when and where it was first seen")

EXPIRY = LOCAL_PREFIX + b"e"


def expiry_key(ts: float, key: bytes) -> bytes:
    """The index key of the entry ``key`` seen at ``ts``: a big-endian double sorts like
    the positive number it holds, so expiring is a range scan in RocksDB."""
    return EXPIRY + struct.pack(">d", ts) + key


def expiry_bound(ts: float) -> bytes:
    """Index keys below this belong to entries seen before ``ts``."""
    return EXPIRY + struct.pack(">d", ts)


def entry_of(index_key: bytes) -> tuple[float, bytes]:
    """(ts, entry key) of an index key."""
    start = len(EXPIRY)
    return struct.unpack(">d", index_key[start : start + 8])[0], index_key[start + 8 :]


def _index(key: bytes, value: bytes | None) -> Iterable[Write]:
    if value is None:
        return ()
    return ((expiry_key(orjson.loads(value)[0], key), b""),)


index_with(seen_ids, EXPIRY, "expiry-1", _index)
