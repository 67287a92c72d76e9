"""``seen-ids``: the duplicate memory, one key per (SKU, order_id or event_id).

Key ``p<partition>/<o|s>/<sku>\\x1f<id>``, value ``[ts, source_topic, partition, offset]``.
The partition prefix lets a worker rebuild its expiry index for just the partitions it
is assigned; entries leave once stream time passes ``ts + DEDUPE_SECONDS``.
"""

from tables.base import raw_table

seen_ids = raw_table("seen-ids", "order/event id per SKU -> when and where it was first seen")
