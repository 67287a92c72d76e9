"""Dashboard: the live HTML page at ``/``, its assets, and the two JSON views it needs.

This module owns the routes ``/`` (``app/serving/static/index.html``), ``/static/{name}`` (the
files of ``app/serving/static/``, shipped with the package), ``/config`` (the settings the page
shows: reorder point, window sizes, ...) and ``/dashboard/windows`` (closed and open
tumbling windows summed over every SKU of every worker, for the chart). The page itself is
plain HTML, CSS and JavaScript that polls the JSON endpoints every 1.5 s and updates in
place.

Assets are served only by exact file name from a list made at import: a name that is
not a file of ``app/serving/static/`` (``..``, sub-folders, anything else) is a JSON 404.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web as aioweb

from app.domain.events import format_ts
from app.domain.rules import windows as w
from app.domain.text import cut
from app.engine.instance import settings
from app.engine.stores import items
from app.engine.web_server import error, json_response
from app.serving.web import gathered, int_query, merged, route
from tables import windows

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
TEXT_TYPES = frozenset({".html", ".js", ".css", ".svg"})

ASSETS: dict[str, Path] = (
    {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}
    if STATIC_DIR.is_dir()
    else {}
)
"""File name -> path: the only files ``/static/{name}`` serves."""

CHART_WINDOWS = 30
"""Tumbling windows the chart shows by default (the newest ones)."""


def asset_response(name: str) -> aioweb.Response:
    path = ASSETS.get(name)
    if path is None:
        return error(404, f"unknown static file: {cut(name)}")
    try:
        body = path.read_bytes()
    except OSError:
        return error(404, f"unknown static file: {cut(name)}")
    return aioweb.Response(
        body=body,
        content_type=CONTENT_TYPES[path.suffix],
        charset="utf-8" if path.suffix in TEXT_TYPES else None,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@route("/")
async def index(web: Any, request: Any) -> aioweb.Response:
    """The dashboard page."""
    return asset_response("index.html")


@route("/static/{name}")
async def static(web: Any, request: Any, name: str) -> aioweb.Response:
    """One file of ``app/serving/static/`` by its exact name."""
    return asset_response(name)


def config_doc() -> dict[str, Any]:
    return {
        "app_id": settings.app_id,
        "reorder_point": settings.reorder_point,
        "reorder_target": settings.reorder_target,
        "tumbling_seconds": settings.tumbling_seconds,
        "hopping_seconds": settings.hopping_seconds,
        "hopping_step_seconds": settings.hopping_step_seconds,
        "window_grace_seconds": settings.window_grace_seconds,
        "expedite_threshold": settings.expedite_threshold,
        "topic_partitions": settings.topic_partitions,
    }


@route("/config")
async def config(web: Any, request: Any) -> aioweb.Response:
    """The settings the dashboard needs to label and highlight what it shows."""
    return json_response(config_doc())


def tumbling_totals(limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` tumbling windows held here, each summed over every SKU.

    A window counts as closed once it has closed for every SKU that has it (each
    partition closes windows by its own stream time).
    """
    prefix = b"tumbling|"
    sums: dict[int, list[Any]] = {}  # start -> [orders, units, revenue, skus, all closed]
    for key, raw in items(windows):
        if not key.startswith(prefix):
            continue
        try:
            _, _, start = w.parse_window_key(key.decode())
            stored = orjson.loads(raw)
            agg = w.agg_from_json(stored)
        except ValueError:
            continue
        entry = sums.setdefault(start, [0, 0, 0, 0, True])
        entry[0] += agg.orders
        entry[1] += agg.units
        entry[2] += agg.revenue
        entry[3] += 1
        entry[4] = entry[4] and bool(stored.get("closed"))
    size = settings.tumbling_seconds
    return [
        {
            "window_start": format_ts(start),
            "window_end": format_ts(start + size),
            "orders": orders,
            "units": units,
            "revenue": w.revenue_out(revenue),
            "skus": skus,
            "closed": closed,
        }
        for start, (orders, units, revenue, skus, closed) in sorted(sums.items())[-limit:]
    ]


@route("/dashboard/windows")
async def window_totals(web: Any, request: Any) -> aioweb.Response:
    """``{"kind", "size", "windows": [...]}``: tumbling windows summed over SKUs, by start."""
    limit = int_query(request, "limit", CHART_WINDOWS, 1, 1000)
    local = {"kind": "tumbling", "size": settings.tumbling_seconds}
    bodies = await gathered(request, {**local, "windows": tumbling_totals(limit)})
    return merged(bodies, {**local, "windows": merge_totals(bodies, limit)})


def merge_totals(bodies: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Several workers' tumbling totals as one: summed per window start, newest ``limit``.

    Each worker sent its newest ``limit`` starts, so no start of the overall newest
    ``limit`` is missing from a worker that has it.
    """
    if len(bodies) == 1:
        return list(bodies[0]["windows"])
    by_start: dict[str, dict[str, Any]] = {}
    cents: dict[str, Decimal] = {}
    for body in bodies:
        for win in body["windows"]:
            start = win["window_start"]
            if start not in by_start:
                by_start[start] = {**win}
                cents[start] = Decimal(str(win["revenue"]))
                continue
            total = by_start[start]
            total["orders"] += win["orders"]
            total["units"] += win["units"]
            total["skus"] += win["skus"]
            total["closed"] = total["closed"] and win["closed"]
            cents[start] += Decimal(str(win["revenue"]))
    for start, total in by_start.items():
        total["revenue"] = w.revenue_out(cents[start])
    # ISO-8601 UTC strings of one format sort as the times they name.
    return [by_start[start] for start in sorted(by_start)[-limit:]]
