"""``sku-state``: per SKU, its level, open supplier order and last applied event."""

from tables.base import raw_table

sku_state = raw_table(
    "sku-state",
    "SKU -> {level, updated_ts, supplier_orders_opened, open_order, as_of}",
)
