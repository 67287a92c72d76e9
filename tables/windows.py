"""``windows``: demand aggregates per (SKU, kind, window start), open and recently closed.

Key: ``app.domain.rules.windows.window_key_str`` of (SKU, kind, start). Closing is driven by
stream time in the tracker, not by Faust's wall-clock windowed tables.
"""

from tables.base import raw_table

windows = raw_table("windows", "window -> {orders, units, revenue, closed, expedited}")
