"""``windows``: demand aggregates per (SKU, kind, window start), open and recently closed,
and their index by SKU.

Key: ``app.domain.rules.windows.window_key_str`` of (SKU, kind, start), so keys of one kind
sort by start (the tracker purges closed windows by key range). Closing is driven by
stream time in the tracker, not by Faust's wall-clock windowed tables. Each key implies a
local key that starts with its SKU (:func:`keys_of`), written and deleted with it by the
store on every path (app/engine/stores.py, ``index_with``): one SKU's windows are read
without a pass over the partition's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from app.engine.stores import LOCAL_PREFIX, Write, index_with, local_range
from tables.base import raw_table

windows = raw_table("windows", "window -> {orders, units, revenue, closed, expedited}")

BY_SKU = LOCAL_PREFIX + b"s"


def _sku_prefix(sku: bytes) -> bytes:
    # Length first: a SKU may hold any character, so no separator could end it.
    return BY_SKU + struct.pack(">H", len(sku)) + sku


def _index(key: bytes, value: bytes | None) -> Iterable[Write]:
    sku = key.split(b"|", 2)[-1]
    return ((_sku_prefix(sku) + key, None if value is None else b""),)


index_with(windows, BY_SKU, "by-sku-1", _index)


def keys_of(sku: str, partition: int) -> list[bytes]:
    """The keys of ``sku``'s windows in the local store partition, sorted."""
    return keys_between(sku, partition, b"", b"\xff")


def keys_between(sku: str, partition: int, first: bytes, stop: bytes) -> list[bytes]:
    """The keys of ``sku``'s windows in the local store partition from ``first`` up to
    ``stop`` (excluded), sorted: e.g. one kind's from a start on, as keys of one kind
    sort by start."""
    prefix = _sku_prefix(sku.encode())
    found = local_range(windows, partition, prefix + first, prefix + stop)
    return [k[len(prefix) :] for k, _ in found]
