"""HTTP: every table readable over the worker's web server, as JSON.

Errors are JSON too: unknown things 404, malformed requests 400, each ``{"error": ...}``;
the middleware turns anything unexpected into a JSON answer instead of a traceback.

With several workers any worker answers any request (``app/serving/cluster.py``): a request about
a SKU goes to the worker that owns it, lists and counts are gathered from every worker
and merged here, an order is looked up here first and then on the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web as aioweb
from faust.exceptions import ConsumerNotStarted

from agents import waiters
from app.domain import schemas
from app.domain.events import format_ts
from app.domain.rules import windows as w
from app.domain.text import cut
from app.engine import health as worker_health
from app.engine.instance import app, settings
from app.engine.restore import unrestored
from app.engine.startup import INSTANCE_HEADER
from app.engine.stores import get, items, lookup
from app.engine.topics import events_by_sku, sku_partition
from app.engine.web_server import error, json_response
from app.serving import cluster
from app.serving.cluster import PeerError
from tables import (
    dead_letter_stats,
    order_status,
    partition_state,
    sku_state,
    supplier_orders,
    windows,
)
from tables.windows import keys_of

log = logging.getLogger(__name__)

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_KEY_CHARS = 64

Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]
View = Callable[..., Awaitable[aioweb.Response]]


@aioweb.middleware
async def json_errors(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
    try:
        response = await handler(request)
        if cluster.SERVED_BY_HEADER not in response.headers:
            response.headers[cluster.SERVED_BY_HEADER] = cluster.self_url()
        return response
    except PeerError as exc:
        return error(503, str(exc))
    except aioweb.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = "not found" if exc.status == 404 else exc.reason.lower()
        return error(exc.status, f"{reason}: {request.method} {cut(request.path)}")
    except Exception:
        log.exception("Unexpected error serving %s %s", request.method, cut(request.path))
        return error(500, "internal error (logged by the worker)")


app.conf.web_application_options = {"middlewares": [json_errors]}


def route(path: str) -> Callable[[View], View]:
    """``app.page`` for plain ``async def view(web, request, **match_info)`` functions."""

    def register(view: View) -> View:
        page: Any = app.page(path)
        page(view)
        return view

    return register


def key_param(value: str, name: str) -> str:
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise aioweb.HTTPBadRequest(reason=f"{name} must be 1-{MAX_KEY_CHARS} characters")
    return value


def int_query(request: Any, name: str, default: int, lo: int, hi: int) -> int:
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


async def routed(request: Any, sku: str, local: Callable[[], aioweb.Response]) -> aioweb.Response:
    """``local()`` if this worker owns ``sku`` (or the request was forwarded here), else
    the owner's answer, passed through."""
    owner = None if cluster.is_forwarded(request) else cluster.owner_of(sku)
    if owner is None:
        partition = sku_partition(sku)
        if (events_by_sku.get_topic_name(), partition) in unrestored(assigned()):
            return error(503, f"partition {partition} is being restored here; try again shortly")
        return local()
    status, body = await cluster.fetch(owner, request)
    response = json_response(body, status)
    response.headers[cluster.SERVED_BY_HEADER] = owner
    return response


async def gathered(request: Any, local: dict[str, Any]) -> list[dict[str, Any]]:
    """This worker's ``local`` answer plus every other worker's, unless forwarded here."""
    if cluster.is_forwarded(request):
        return [local]
    return [local, *await cluster.gather(request)]


def merged(bodies: list[dict[str, Any]], body: dict[str, Any]) -> aioweb.Response:
    response = json_response(body)
    if len(bodies) > 1:
        response.headers[cluster.SERVED_BY_HEADER] = "gathered"
    return response


def doc(table: Any, key: bytes) -> Any | None:
    raw = lookup(table, key)
    return None if raw is None else orjson.loads(raw)


def stock_view(sku: str, state: dict[str, Any]) -> dict[str, Any]:
    open_order = state["open_order"]
    if open_order is not None:
        # Stored times are epoch seconds; answers carry ISO-8601 strings only.
        open_order = dict(open_order)
        open_order["created_at"] = format_ts(open_order.pop("created_ts"))
        open_order["ts"] = format_ts(open_order["ts"])
    return {
        "sku": sku,
        "level": state["level"],
        "open_supplier_order": open_order,
        "updated_at": format_ts(state["updated_ts"]),
        "supplier_orders_opened": state["supplier_orders_opened"],
        "as_of": state.get("as_of"),
    }


def assigned() -> set[Any]:
    """This worker's partitions; none while its consumer is not running yet."""
    consumer: Any = app.consumer
    try:
        return set(consumer.assignment())
    except ConsumerNotStarted:
        return set()


@route("/health")
async def health(web: Any, request: Any) -> aioweb.Response:
    response = _health()
    if settings.worker_instance_id:
        # How a worker starting with the same id finds this one (app/engine/startup.py).
        response.headers[INSTANCE_HEADER] = settings.worker_instance_id
    return response


def _health() -> aioweb.Response:
    # Never ok while stopping; degraded (with the reason) while the cluster or the commits
    # stand in the way (app/engine/health.py); ready once Faust's recovery is done and every
    # assigned partition is restored.
    if app.should_stop or worker_health.state.stopping:
        return json_response({"status": "stopping"}, status=503)
    reason = worker_health.degraded()
    if reason is not None:
        return json_response({"status": "degraded", "reason": reason}, status=503)
    recovery: Any = app.tables
    if not recovery.recovery.completed.is_set():
        return json_response({"status": "starting"}, status=503)
    pending = unrestored(assigned())
    if pending:
        restoring = [f"{topic}[{partition}]" for topic, partition in pending]
        return json_response({"status": "restoring", "partitions": restoring}, status=503)
    return json_response({"status": "ok"})


@route("/stock/{sku}")
async def stock_item(web: Any, request: Any, sku: str) -> aioweb.Response:
    sku = key_param(sku, "sku")

    def local() -> aioweb.Response:
        state = doc(sku_state, sku.encode())
        if state is None:
            return error(404, f"unknown sku: {sku}")
        return json_response(stock_view(sku, state))

    return await routed(request, sku, local)


@route("/stock/")
async def stock_list(web: Any, request: Any) -> aioweb.Response:
    limit = int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = request.query.get("after")
    rows = sorted((k.decode(), v) for k, v in items(sku_state))
    if after is not None:
        rows = [r for r in rows if r[0] > after]
    page = rows[:limit]
    body = [{"sku": sku, "level": orjson.loads(raw)["level"]} for sku, raw in page]
    more = len(rows) > limit
    local = {"items": body, "next": page[-1][0] if more else None}
    bodies = await gathered(request, local)
    # Each worker sent its first ``limit`` SKUs after ``after``: the first ``limit`` of
    # their union are the first ``limit`` overall.
    every = sorted((i for b in bodies for i in b["items"]), key=lambda i: str(i["sku"]))
    more = len(every) > limit or any(b["next"] is not None for b in bodies)
    page_items = every[:limit]
    next_sku = page_items[-1]["sku"] if more and page_items else None
    return merged(bodies, {"items": page_items, "next": next_sku})


MAX_WAIT_SECONDS = 30.0
"""Longest ``?wait=S`` of ``GET /orders/{order_id}``."""


def wait_query(request: Any) -> float | None:
    """The ``wait`` query parameter: seconds, 0 < S <= 30, or None when not given."""
    raw = request.query.get("wait")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_WAIT_SECONDS:
        raise aioweb.HTTPBadRequest(
            reason=f"wait must be a number of seconds, 0 < wait <= {MAX_WAIT_SECONDS:g}"
        )
    return value


@route("/orders/{order_id}")
async def order_item(web: Any, request: Any, order_id: str) -> aioweb.Response:
    """An order's status; ``?wait=S`` waits up to S seconds for it to be processed.

    ``sku`` (optional) names the order's SKU: the request then goes straight to the
    worker that owns it. Without it, this worker looks here and asks every other worker
    (each waits too, in parallel, when ``wait`` is given); the first to find it answers.
    """
    order_id = key_param(order_id, "order_id")
    wait = wait_query(request)
    sku = request.query.get("sku")
    if sku is not None:
        sku = key_param(sku, "sku")
    record = doc(order_status, order_id.encode())
    if record is not None:
        return json_response(record)
    forwarded = cluster.is_forwarded(request)
    owner = None if forwarded or sku is None else cluster.owner_of(sku)
    if owner is not None:
        status, body = await cluster.fetch(owner, request, wait_s=wait or 0.0)
        response = json_response(body, status)
        response.headers[cluster.SERVED_BY_HEADER] = owner
        return response
    # Orders live with their SKU, which the id does not name: ask every worker.
    ask = [] if forwarded or sku is not None else cluster.others()
    if wait is not None:
        return await wait_for_order(request, order_id, wait, ask)
    for url, status, body in await cluster.ask_others(request) if ask else []:
        if status == 200:
            response = json_response(body)
            response.headers[cluster.SERVED_BY_HEADER] = url
            return response
        if status != 404:
            raise PeerError(f"worker {url} answered {status} to {cut(request.path_qs)}")
    return error(404, f"unknown order_id: {order_id}")


async def wait_for_order(
    request: Any, order_id: str, wait: float, ask: list[str]
) -> aioweb.Response:
    """Wait up to ``wait`` seconds for the order here (woken by the commit that writes
    it, agents/waiters.py) and, in parallel, on the workers at ``ask`` (each waits the same
    way); answer with the first that finds it, 404 once all of them gave up."""
    key = order_id.encode()
    try:
        with waiters.orders.waiting(key) as committed:
            record = doc(order_status, key)
            if record is not None:
                return json_response(record)
            return await _first_answer(request, order_id, wait, committed, ask)
    except waiters.TooManyWaiting as exc:
        return error(503, str(exc))


async def _first_answer(
    request: Any, order_id: str, wait: float, committed: asyncio.Future[None], ask: list[str]
) -> aioweb.Response:
    key = order_id.encode()
    local = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(committed), wait))
    peers: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(cluster.fetch(url, request, wait_s=wait)): url for url in ask
    }
    pending: set[asyncio.Future[Any]] = {local, *peers}
    problem = ""
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = task.exception()
                if task is local:
                    record = None if failure is not None else doc(order_status, key)
                    if record is not None:
                        return json_response(record)
                    continue
                url = peers[task]
                if failure is not None:
                    problem = problem or str(failure)
                    continue
                status, body = task.result()
                if status == 200:
                    response = json_response(body)
                    response.headers[cluster.SERVED_BY_HEADER] = url
                    return response
                if status != 404:
                    problem = problem or f"worker {url} answered {status} to {request.path_qs}"
    finally:
        for task in (local, *peers):
            task.cancel()
    if problem:
        raise PeerError(problem)
    return error(404, f"unknown order_id: {order_id} (waited {wait:g} s)")


@route("/supplier-orders/{sku}")
async def supplier_order_list(web: Any, request: Any, sku: str) -> aioweb.Response:
    sku = key_param(sku, "sku")

    def local() -> aioweb.Response:
        state = doc(sku_state, sku.encode())
        if state is None:
            return error(404, f"unknown sku: {sku}")
        found = (
            doc(supplier_orders, f"SO-{sku}-{n}".encode())
            for n in range(state["supplier_orders_opened"], 0, -1)
        )
        return json_response({"sku": sku, "supplier_orders": [d for d in found if d is not None]})

    return await routed(request, sku, local)


@route("/supplier-orders/")
async def open_supplier_orders(web: Any, request: Any) -> aioweb.Response:
    """Every open supplier order (one per SKU at most), sorted by SKU."""
    found = []
    for key, raw in items(sku_state):
        state = orjson.loads(raw)
        if state["open_order"] is not None:
            found.append(stock_view(key.decode(), state)["open_supplier_order"])
    bodies = await gathered(request, {"supplier_orders": found})
    every = sorted(
        (so for b in bodies for so in b["supplier_orders"]), key=lambda so: str(so["sku"])
    )
    return merged(bodies, {"supplier_orders": every})


@route("/windows/{sku}")
async def window_list(web: Any, request: Any, sku: str) -> aioweb.Response:
    sku = key_param(sku, "sku")
    kind = request.query.get("kind", "tumbling")
    if kind not in w.KINDS:
        return error(400, f"kind must be tumbling or hopping, got {cut(repr(kind))}")
    return await routed(request, sku, lambda: windows_of(sku, kind))


def windows_of(sku: str, kind: str) -> aioweb.Response:
    # Like every other keyed read: a SKU no event ever named is unknown, not empty.
    if lookup(sku_state, sku.encode()) is None:
        return error(404, f"unknown sku: {sku}")
    spec = (
        w.tumbling(settings.tumbling_seconds)
        if kind == "tumbling"
        else w.hopping(settings.hopping_seconds, settings.hopping_step_seconds)
    )
    found: list[tuple[int, dict[str, Any]]] = []
    partition = sku_partition(sku)
    for key in keys_of(sku, partition):
        k_sku, k_kind, start = w.parse_window_key(key.decode())
        raw = get(windows, key, partition)
        if k_sku != sku or k_kind != kind or raw is None:
            continue
        stored = orjson.loads(raw)
        agg = w.agg_from_json(stored)
        window = {
            "window_start": format_ts(start),
            "window_end": format_ts(start + spec.size_s),
            "orders": agg.orders,
            "units": agg.units,
            "revenue": w.revenue_out(agg.revenue),
            "closed": bool(stored.get("closed")),
        }
        found.append((start, window))
    found.sort(key=lambda pair: pair[0])
    return json_response(
        {
            "sku": sku,
            "kind": kind,
            "size": spec.size_s,
            "step": spec.step_s,
            "windows": [window for _, window in found],
        }
    )


def partition_docs() -> list[dict[str, Any]]:
    return [orjson.loads(raw) for _, raw in items(partition_state)]


def totals() -> dict[str, int]:
    """The ``/stats`` counts, summed over this worker's partitions (also for /metrics)."""
    counters: dict[str, int] = {}
    for meta in partition_docs():
        for name, count in meta.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + count
    dead = sum(orjson.loads(raw)["count"] for _, raw in items(dead_letter_stats))
    orders, moves = counters.get("orders", 0), counters.get("stock_moves", 0)
    return {
        "processed": orders + moves,
        "processed_orders": orders,
        "processed_stock_moves": moves,
        "dead_lettered": dead,
        "duplicates": counters.get("duplicates", 0),
        "late": counters.get("late_orders", 0),
        "expedites": counters.get("expedites", 0),
        "replays_skipped": counters.get("replayed", 0),
    }


@route("/stats")
async def stats(web: Any, request: Any) -> aioweb.Response:
    """The counts summed over every worker (``workers`` says how many answered)."""
    bodies = await gathered(request, {**totals(), "workers": 1})
    summed: dict[str, int] = {}
    for body in bodies:
        for name, count in body.items():
            summed[name] = summed.get(name, 0) + count
    return merged(bodies, summed)


def newest(
    expedites: Iterable[dict[str, Any]],
    results: Iterable[dict[str, Any]],
    dead_letters: Iterable[dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """The ``/recent`` answer: the latest of each, newest first, however many sources."""
    return {
        "expedites": sorted(expedites, key=lambda e: (e["window_start"], e["sku"]), reverse=True)[
            :20
        ],
        "window_results": sorted(
            results, key=lambda r: (r["window_end"], r["kind"], r["sku"]), reverse=True
        )[:50],
        "dead_letters": sorted(
            dead_letters,
            key=lambda d: (
                d.get("dead_lettered_at", ""),
                d["source_topic"],
                d["partition"],
                d["offset"],
            ),
            reverse=True,
        )[:20],
    }


@route("/recent")
async def recent(web: Any, request: Any) -> aioweb.Response:
    """The latest expedites, window results and dead letters, newest first (dashboard)."""
    metas = partition_docs()
    local = newest(
        (e for m in metas for e in m.get("recent_expedites", [])),
        (r for m in metas for r in m.get("recent_results", [])),
        (d for _, raw in items(dead_letter_stats) for d in orjson.loads(raw)["recent"]),
    )
    bodies = await gathered(request, local)
    return merged(
        bodies,
        newest(
            (e for b in bodies for e in b["expedites"]),
            (r for b in bodies for r in b["window_results"]),
            (d for b in bodies for d in b["dead_letters"]),
        ),
    )


@route("/schemas")
async def schema_index(web: Any, request: Any) -> aioweb.Response:
    """Which topics have a published JSON Schema, and where to get each."""
    return json_response(
        {
            "dialect": schemas.DIALECT,
            "inputs": list(schemas.INPUT_TOPICS),
            "outputs": list(schemas.OUTPUT_TOPICS),
            "schemas": {
                topic: f"/schemas/{topic}"
                for topic in (*schemas.INPUT_TOPICS, *schemas.OUTPUT_TOPICS)
            },
        }
    )


@route("/schemas/{topic}")
async def schema_item(web: Any, request: Any, topic: str) -> aioweb.Response:
    """The JSON Schema (draft 2020-12) of one topic's values; the contract's topic names."""
    try:
        return json_response(schemas.schema(topic))
    except KeyError:
        return error(404, f"no schema for topic {topic!r}; see /schemas")


@route("/cluster")
async def cluster_view(web: Any, request: Any) -> aioweb.Response:
    """Which worker processes which partition of the SKU-keyed topic (and so which SKUs)."""
    owners = cluster.partition_owners()
    return json_response(
        {
            "self": cluster.self_url(),
            "partitions": settings.topic_partitions,
            "workers": [
                {"url": url, "partitions": sorted(p for p, u in owners.items() if u == url)}
                for url in cluster.workers()
            ],
        }
    )
