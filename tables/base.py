"""How every table of the app is declared: raw bytes, co-partitioned, bounded memory.

Reads and writes go through app/engine/stores.py (explicit partitions, one write batch
per commit); the agents parse each value once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from app.engine.instance import app, settings
from app.engine.stores import ROCKSDB_OPTIONS, Derive, Write, share_store_memory


def raw_table(name: str, help: str) -> Any:
    """A Table with bytes keys and values, co-partitioned with the SKU-keyed topic."""
    table = app.Table(
        name,
        options=dict(ROCKSDB_OPTIONS),
        # bytes types select Faust's "raw" codec for the store and the changelog.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        help=help,
    )
    # Every store of the worker on one memory budget (app/engine/stores.py).
    share_store_memory(table, settings.store_memory_mb * 1024**2)
    return table


class TimeIndex(NamedTuple):
    """Local keys ordered by a time: ``prefix``, the time as a big-endian double (which
    sorts like the positive number it holds), then the key of the record it indexes; so
    what is older than a time is one range scan in RocksDB."""

    prefix: bytes

    def key(self, ts: float, key: bytes) -> bytes:
        """The index key of the record ``key`` at ``ts``."""
        return self.prefix + struct.pack(">d", ts) + key

    def bound(self, ts: float) -> bytes:
        """Index keys below this belong to records of before ``ts``."""
        return self.prefix + struct.pack(">d", ts)

    def entry(self, index_key: bytes) -> tuple[float, bytes]:
        """(ts, record key) of an index key."""
        start = len(self.prefix)
        return struct.unpack(">d", index_key[start : start + 8])[0], index_key[start + 8 :]

    def derive(self, ts_of: Callable[[bytes], float]) -> Derive:
        """What a record implies in this index (for ``index_with``): one key at the time
        ``ts_of`` its value; nothing for a delete (the key it leaves is recognised as
        stale by whoever reads the index, from the record it names)."""

        def index(key: bytes, value: bytes | None) -> Iterable[Write]:
            return () if value is None else ((self.key(ts_of(value), key), b""),)

        return index
