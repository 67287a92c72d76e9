"""``order-status``: every processed order by ``order_id``.

Written in the same transaction as the order's ``order-status`` message, so the table is
never ahead of or behind the topic.
"""

from tables.base import raw_table

order_status = raw_table("order-status", "order_id -> the order's status record")
