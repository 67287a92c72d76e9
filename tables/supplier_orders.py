"""``supplier-orders``: every supplier order by id (``SO-<sku>-<n>``), latest state."""

from tables.base import raw_table

supplier_orders = raw_table(
    "supplier-orders", "supplier_order_id -> the order as on the supplier-orders topic"
)
