"""The app's changelog-backed tables, one module each.

Keys and values are raw bytes (values are orjson documents): the agents parse each value
once and write each key at most once per batch, through ``app.engine.transaction``.
"""

from tables.dead_letter_stats import dead_letter_stats
from tables.order_status import order_status
from tables.partition_state import partition_state
from tables.seen_ids import seen_ids
from tables.sku_state import sku_state
from tables.supplier_orders import supplier_orders
from tables.windows import windows

__all__ = [
    "dead_letter_stats",
    "order_status",
    "partition_state",
    "seen_ids",
    "sku_state",
    "supplier_orders",
    "windows",
]
