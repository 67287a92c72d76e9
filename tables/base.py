"""How every table of the app is declared: raw bytes, co-partitioned, bounded memory.

Reads and writes go through app/engine/stores.py (explicit partitions, one write batch
per commit); the agents parse each value once.
"""

from __future__ import annotations

from typing import Any

from app.engine.instance import app, settings
from app.engine.stores import ROCKSDB_OPTIONS, share_store_memory


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
