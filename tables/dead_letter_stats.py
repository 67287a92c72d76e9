"""``dead-letter-stats``: per partition of ``dead-letters``, the count and the latest few."""

from tables.base import raw_table

dead_letter_stats = raw_table("dead-letter-stats", "partition -> {count, recent}")
