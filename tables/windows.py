"""``windows``: demand aggregates per (SKU, kind, window start), open and recently closed.

Key ``p<partition>/<window key>``. Closing is driven by stream time in the tracker, not
by Faust's wall-clock windowed tables (see docs/windows.md).
"""

from tables.base import raw_table

windows = raw_table("windows", "window -> {orders, units, revenue, closed, expedited}")
