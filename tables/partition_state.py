"""``partition-state``: per partition of the SKU-keyed stream, its stream times and counters.

Key ``p<partition>``. Stream time is the largest event ``ts`` seen in the partition; it
drives window closing and expiry, so a replay gives the same answers as the live run.
"""

from tables.base import raw_table

partition_state = raw_table(
    "partition-state", "partition -> {stream_time, order_stream_time, counters}"
)
