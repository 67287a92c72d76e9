"""How every table of the app is declared: raw bytes in, raw bytes out."""

from __future__ import annotations

from typing import Any

from app.main import app, settings


def raw_table(name: str, help: str) -> Any:
    """A Table with bytes keys and values, co-partitioned with the SKU-keyed topic."""
    return app.Table(
        name,
        # bytes types select Faust's "raw" codec for the store and the changelog.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        help=help,
    )


def partition_prefix(partition: int) -> bytes:
    """Key prefix of the tables whose keys are rebuilt per partition after a rebalance."""
    return b"p%d/" % partition
