"""HTTP: every table readable over the worker's web server, as JSON.

Errors are JSON too: unknown things 404, malformed requests 400, each ``{"error": ...}``;
the middleware turns anything unexpected into a JSON answer instead of a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from app.main import app, settings
from app.rules import windows as w
from tables import (
    dead_letter_stats,
    order_status,
    partition_state,
    sku_state,
    supplier_orders,
    windows,
)
from tables.base import partition_prefix

log = logging.getLogger(__name__)

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_KEY_CHARS = 64

Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


def json_response(data: Any, status: int = 200) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> aioweb.Response:
    return json_response({"error": message}, status=status)


@aioweb.middleware
async def json_errors(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
    try:
        return await handler(request)
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = "not found" if exc.status == 404 else exc.reason.lower()
        return error(exc.status, f"{reason}: {request.method} {request.path}")
    except Exception:
        log.exception("Unexpected error serving %s %s", request.method, request.path)
        return error(500, "internal error (logged by the worker)")


class WebServer(AiohttpWeb):  # type: ignore[misc]
    """Faust's aiohttp server without its built-in index and debug pages (we own ``/``)."""

    production_blueprints: list[Any] = []  # noqa: RUF012 - overrides a ClassVar
    debug_blueprints: list[Any] = []  # noqa: RUF012


app.conf.web_application_options = {"middlewares": [json_errors]}
app._new_web = lambda: WebServer(app)  # type: ignore[method-assign]


def _key_param(request: Any, name: str) -> str:
    value: str = request.match_info[name]
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise aioweb.HTTPBadRequest(reason=f"{name} must be 1-{MAX_KEY_CHARS} characters")
    return value


def _doc(table: Any, key: bytes) -> Any | None:
    raw = table.data.get(key)
    return None if raw is None else orjson.loads(raw)


def _sku_partition(sku: str) -> int:
    from agents.ingest import sku_partition

    return sku_partition(sku)


def stock_view(sku: str, doc: dict[str, Any]) -> dict[str, Any]:
    from app.events import format_ts

    return {
        "sku": sku,
        "level": doc["level"],
        "open_supplier_order": doc["open_order"],
        "updated_at": format_ts(doc["updated_ts"]),
        "supplier_orders_opened": doc["supplier_orders_opened"],
        "as_of": doc.get("as_of"),
    }


@app.page("/health")
async def health(web: Any, request: Any) -> aioweb.Response:
    # Ready once the tables are recovered and the agents consume; 503 until then.
    if app.tables.recovery.completed.is_set():
        return json_response({"status": "ok"})
    return json_response({"status": "starting"}, status=503)


@app.page("/stock/{sku}")
async def stock_item(web: Any, request: Any, sku: str) -> aioweb.Response:
    sku = _key_param(request, "sku")
    doc = _doc(sku_state, sku.encode())
    if doc is None:
        return error(404, f"unknown sku: {sku}")
    return json_response(stock_view(sku, doc))


def _int_query(request: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise aioweb.HTTPBadRequest(reason=f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise aioweb.HTTPBadRequest(reason=f"{name} must be between {lo} and {hi}")
    return value


@app.page("/stock/")
async def stock_list(web: Any, request: Any) -> aioweb.Response:
    limit = _int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = request.query.get("after")
    keys = sorted(k.decode() for k in sku_state.data)
    if after is not None:
        keys = [k for k in keys if k > after]
    page = keys[:limit]
    items = []
    for sku in page:
        doc = _doc(sku_state, sku.encode())
        if doc is not None:
            items.append({"sku": sku, "level": doc["level"]})
    more = len(keys) > limit
    return json_response({"items": items, "next": page[-1] if more and page else None})


@app.page("/orders/{order_id}")
async def order_item(web: Any, request: Any, order_id: str) -> aioweb.Response:
    order_id = _key_param(request, "order_id")
    doc = _doc(order_status, order_id.encode())
    if doc is None:
        return error(404, f"unknown order_id: {order_id}")
    return json_response(doc)


@app.page("/supplier-orders/{sku}")
async def supplier_order_list(web: Any, request: Any, sku: str) -> aioweb.Response:
    sku = _key_param(request, "sku")
    state = _doc(sku_state, sku.encode())
    if state is None:
        return error(404, f"unknown sku: {sku}")
    items = []
    for n in range(state["supplier_orders_opened"], 0, -1):
        doc = _doc(supplier_orders, f"SO-{sku}-{n}".encode())
        if doc is not None:
            items.append(doc)
    return json_response({"sku": sku, "supplier_orders": items})


@app.page("/windows/{sku}")
async def window_list(web: Any, request: Any, sku: str) -> aioweb.Response:
    from app.events import format_ts

    sku = _key_param(request, "sku")
    kind = request.query.get("kind", "tumbling")
    if kind not in ("tumbling", "hopping"):
        return error(400, f"kind must be tumbling or hopping, got {kind!r}")
    spec = (
        w.tumbling(settings.tumbling_seconds)
        if kind == "tumbling"
        else w.hopping(settings.hopping_seconds, settings.hopping_step_seconds)
    )
    prefix = partition_prefix(_sku_partition(sku))
    found = []
    for key, value in windows.data.items():
        if not key.startswith(prefix):
            continue
        k_sku, k_kind, start = w.parse_window_key(key[len(prefix) :].decode())
        if k_sku != sku or k_kind != kind:
            continue
        doc = orjson.loads(value)
        agg = w.agg_from_json(doc)
        found.append(
            {
                "window_start": format_ts(start),
                "window_end": format_ts(start + spec.size_s),
                "orders": agg.orders,
                "units": agg.units,
                "revenue": w.revenue_out(agg.revenue),
                "closed": bool(doc.get("closed")),
                "_start": start,
            }
        )
    found.sort(key=lambda d: d["_start"])
    for d in found:
        del d["_start"]
    return json_response(
        {"sku": sku, "kind": kind, "size": spec.size_s, "step": spec.step_s, "windows": found}
    )


@app.page("/stats")
async def stats(web: Any, request: Any) -> aioweb.Response:
    totals: dict[str, int] = {}
    for raw in partition_state.data.values():
        for name, count in orjson.loads(raw).get("counters", {}).items():
            totals[name] = totals.get(name, 0) + count
    dead = sum(orjson.loads(raw)["count"] for raw in dead_letter_stats.data.values())
    processed = totals.get("orders", 0) + totals.get("stock_moves", 0)
    return json_response(
        {
            "processed": processed,
            "processed_orders": totals.get("orders", 0),
            "processed_stock_moves": totals.get("stock_moves", 0),
            "dead_lettered": dead,
            "duplicates": totals.get("duplicates", 0),
            "late": totals.get("late_orders", 0),
            "replays_skipped": totals.get("replayed", 0),
        }
    )
