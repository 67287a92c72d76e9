"""How every table of the app is declared: raw bytes, co-partitioned, bounded memory.

Reads and writes go through app/engine/stores.py (explicit partitions, one write batch
per commit); the agents parse each value once.
"""

from __future__ import annotations

from typing import Any

from app.engine.instance import app, settings

ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024**2,
}
"""Per RocksDB instance (one per table per partition: 6 x TOPIC_PARTITIONS of them).

Faust's defaults are three 64 MiB memtables and a 2 GiB block cache *each*, so a
worker's memory grew with every order it stored until those filled (about 1 KB per
order, measured up to 1M orders). These bound it at about 12 MiB per instance; the
data itself stays on disk.
"""


def raw_table(name: str, help: str) -> Any:
    """A Table with bytes keys and values, co-partitioned with the SKU-keyed topic."""
    return app.Table(
        name,
        options=dict(ROCKSDB_OPTIONS),
        # bytes types select Faust's "raw" codec for the store and the changelog.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        help=help,
    )
