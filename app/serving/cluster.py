"""Which worker answers which HTTP request: routing by SKU and gathering lists.

Every worker holds the tables of the SKU partitions it processes, so a worker asked about
a key it does not own forwards the request to the owner, and a list is gathered from every
worker and merged. Who owns what comes from Faust's group assignment: each worker
announces its ``canonical_url`` (WEB_ADVERTISED_URL) when it joins, and every member
learns which URL consumes each partition of the SKU-keyed topic.

A forwarded request carries :data:`HOP_HEADER`; the worker that receives it answers from
its own partitions and never forwards again, so a stale assignment can cost one wrong
answer during a rebalance but never a loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web as aioweb
from faust.types import TP

from app.domain.text import cut
from app.engine.group import partition_urls, worker_urls
from app.engine.instance import app, settings
from app.engine.topics import events_by_sku, sku_partition

HOP_HEADER = "X-Stock-Tracker-Hop"
"""Marks a request one worker sent another: answer locally, do not route again."""
SERVED_BY_HEADER = "X-Served-By"
"""On every answer: the URL of the worker whose partitions it came from (or ``gathered``)."""


class PeerError(Exception):
    """Another worker did not give a usable answer; becomes a 503 for the client."""


def self_url() -> str:
    return str(app.conf.canonical_url).rstrip("/")


def is_forwarded(request: aioweb.Request) -> bool:
    return HOP_HEADER in request.headers


def partition_owners() -> dict[int, str]:
    """Partition of the SKU-keyed topic -> URL of the worker that processes it."""
    topic = events_by_sku.get_topic_name()
    return {
        tp.partition: url.rstrip("/") for tp, url in partition_urls().items() if tp.topic == topic
    }


def workers() -> list[str]:
    """Every worker's URL in the current assignment (this one included), sorted."""
    urls = {url.rstrip("/") for url in worker_urls()}
    urls.add(self_url())
    return sorted(urls)


def owner_of(sku: str) -> str | None:
    """URL of the worker that owns ``sku``, or None when that is this worker.

    Before the first assignment (or for a partition nobody holds yet) the answer is
    None too: this worker answers from what it has.
    """
    url = partition_urls().get(TP(events_by_sku.get_topic_name(), sku_partition(sku)))
    if url is None or url.rstrip("/") == self_url():
        return None
    return str(url).rstrip("/")


async def fetch(url: str, request: aioweb.Request, *, wait_s: float = 0.0) -> tuple[int, Any]:
    """GET the same path and query from the worker at ``url``: (status, JSON body).

    ``wait_s``: how long the other worker may hold the request on purpose (``?wait=S``),
    on top of PEER_TIMEOUT_SECONDS.
    """
    timeout = aiohttp.ClientTimeout(total=settings.peer_timeout_seconds + wait_s)
    target = url + request.path_qs
    try:
        session: Any = app.http_client
        async with session.get(target, headers={HOP_HEADER: self_url()}, timeout=timeout) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw)
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        what = cut(request.path_qs)
        raise PeerError(f"worker {url} did not answer {what}: {cut(reason)}") from None


def others() -> list[str]:
    """Every other worker's URL in the current assignment."""
    return [url for url in workers() if url != self_url()]


async def ask_others(request: aioweb.Request) -> list[tuple[str, int, Any]]:
    """(url, status, JSON body) of every *other* worker's local answer to ``request``."""
    urls = others()
    answers = await asyncio.gather(*(fetch(url, request) for url in urls))
    return [(url, status, body) for url, (status, body) in zip(urls, answers, strict=True)]


async def gather(request: aioweb.Request) -> list[Any]:
    """The bodies of every *other* worker's local answer to ``request`` (all must be 200)."""
    bodies = []
    for url, status, body in await ask_others(request):
        if status != 200:
            what, said = cut(request.path_qs), cut(str(body))
            raise PeerError(f"worker {url} answered {status} to {what}: {said}")
        bodies.append(body)
    return bodies
