"""``GET /metrics`` (Prometheus text format 0.0.4), plus the gauges only serving knows.

The registry and every metric the engine and the agents update live in
app/engine/metrics.py; this module adds the table totals (the ``/stats`` counts) and the
waiting read-your-writes requests, and renders the lot when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web as aioweb

from agents import waiters
from app.engine.metrics import CONTENT_TYPE, REGISTRY, Gauge, Metric, sample_line
from app.serving.web import route, totals

_TOTALS = (
    ("processed", "stock_tracker_processed_events", "Valid, non-duplicate orders and stock moves"),
    ("processed_orders", "stock_tracker_processed_orders", "Valid, non-duplicate orders"),
    ("processed_stock_moves", "stock_tracker_processed_stock_moves", "Valid stock moves"),
    ("dead_lettered", "stock_tracker_dead_lettered_events", "Rejected input messages"),
    ("duplicates", "stock_tracker_duplicate_events", "Duplicate orders and stock moves"),
    ("late", "stock_tracker_late_orders", "Orders that came after one of their windows closed"),
    ("replays_skipped", "stock_tracker_replays_skipped", "Events skipped as already applied"),
)


class TableTotals(Metric):
    """The ``/stats`` counts as gauges, one family each, from one read of the tables."""

    kind = "gauge"

    def __init__(self) -> None:
        super().__init__("stock_tracker_table_totals", "")

    def render(self) -> Iterator[str]:
        values = totals()
        for key, name, text in _TOTALS:
            yield f"# HELP {name} {text}, summed over this worker's partitions (tables)."
            yield f"# TYPE {name} gauge"
            yield sample_line(name, (), values.get(key, 0))


REGISTRY.register(TableTotals())


REGISTRY.register(
    Gauge(
        "stock_tracker_waiting_requests",
        "GET /orders/{id}?wait=S requests waiting on this worker now (its own and those "
        "other workers forwarded; at most MAX_WAITING_REQUESTS).",
        lambda: [((), float(len(waiters.orders)))],
    )
)


@route("/metrics")
async def metrics_view(web: Any, request: Any) -> aioweb.Response:
    """Every metric in the Prometheus text format (version 0.0.4)."""
    return aioweb.Response(body=REGISTRY.render().encode(), headers={"Content-Type": CONTENT_TYPE})
