"""``seen-ids``: the duplicate memory, one key per (SKU, order_id or event_id).

Key ``<o|s>/<sku>\\x1f<id>``, value ``[ts, source_topic, partition, offset]``: when and
where the id was first seen.
Entries leave once stream time passes ``ts + DEDUPE_SECONDS``.
"""

from tables.base import raw_table

seen_ids = raw_table("seen-ids", "order/event id per SKU -> when and where it was first seen")
