"""Every topic the app reads or writes, declared once with its partition count and config.

All topics are created with ``TOPIC_PARTITIONS`` partitions so that the SKU-keyed
internal topic, the tables' changelogs and the outputs are co-partitioned: whatever a
worker writes while processing partition ``p`` lands in partition ``p``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiokafka.partitioner import murmur2

from app.engine.instance import app, settings


def _topic(name: str, **config: Any) -> Any:
    return app.topic(
        settings.topic_prefix + name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
        # internal=True makes Faust create the topic at start when it is missing.
        internal=True,
        **config,
    )


# Inputs, written by any producer.
orders = _topic("orders")
stock = _topic("stock")

# Internal: valid orders and stock moves, batched per SKU partition (see agents/ingest.py).
events_by_sku = app.topic(
    f"{settings.app_id}-events-by-sku",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    internal=True,
)

# Outputs.
order_status = _topic("order-status")
stock_levels = _topic("stock-levels", config={"cleanup.policy": "compact"})
supplier_orders = _topic("supplier-orders")
expedites = _topic("expedites")
window_results = _topic("window-results")
dead_letters = _topic("dead-letters")

OUTPUTS = (order_status, stock_levels, supplier_orders, expedites, window_results, dead_letters)
ALL = (orders, stock, events_by_sku, *OUTPUTS)


@lru_cache(maxsize=65_536)
def sku_partition(sku: str) -> int:
    """The partition that owns ``sku``: Kafka's default partitioner on the UTF-8 SKU.

    Tables, the SKU-keyed topic and HTTP routing all agree on it.
    """
    return int(murmur2(sku.encode()) & 0x7FFFFFFF) % settings.topic_partitions


# Created at start when missing (StockTrackerApp.on_first_start), which also learns how
# many partitions each has on the broker.
app.own_topics.extend(ALL)


def partitions_of(topic: Any) -> int:
    """Partitions of a declared topic: as found on the broker, else TOPIC_PARTITIONS."""
    return app.partition_counts.get(topic.get_topic_name(), settings.topic_partitions)


def events_by_sku_partitions() -> int:
    return partitions_of(events_by_sku)
