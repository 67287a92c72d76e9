"""``expect --check``: compares the expected results with a worker's HTTP answers and
prints a table of what differs.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from app.domain.rules import windows as w
from app.tools.expect import SO_FIELDS, Expected, expected_stats, held_windows, so_row

# --- expect --check: compare with the worker over HTTP ---------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One expected value, read with ``extract`` from the JSON answer of ``path``."""

    name: str
    path: str
    extract: Callable[[Any], Any]
    expected: Any


@dataclass(frozen=True, slots=True)
class Mismatch:
    name: str
    expected: Any
    actual: Any


_NO_ANSWER = object()


def build_checks(exp: Expected, max_orders: int = 400) -> list[Check]:
    """Every check of ``--check``: stats, per SKU stock, supplier orders and windows,
    and the status of up to ``max_orders`` orders spread over the stream."""
    checks = [
        Check(f"stats {name}", "/stats", _field(name), value)
        for name, value in expected_stats(exp).items()
    ]
    for sku, r in sorted(exp.skus.items()):
        q = urllib.parse.quote(sku, safe="")
        checks.append(Check(f"stock {sku} level", f"/stock/{q}", _field("level"), r.state.level))
        so = r.state.open_order
        checks.append(
            Check(
                f"stock {sku} open supplier order",
                f"/stock/{q}",
                _open_so,
                None if so is None else so_row(so),
            )
        )
        newest_first = [so_row(so) for so in reversed(r.supplier_orders.values())]
        checks.append(
            Check(f"supplier orders {sku}", f"/supplier-orders/{q}", _so_list, newest_first)
        )
        if exp.windows_known:
            for kind in w.KINDS:
                checks.append(
                    Check(
                        f"windows {sku} {kind}",
                        f"/windows/{q}?kind={kind}",
                        _window_rows,
                        held_windows(exp, sku, kind),
                    )
                )
    order_ids = list(exp.statuses)
    step = max(1, math.ceil(len(order_ids) / max_orders))
    for order_id in order_ids[::step]:
        doc = exp.statuses[order_id]
        want = [doc["status"], doc["backordered_units"], doc["level_after"]]
        checks.append(
            Check(
                f"order {order_id}",
                f"/orders/{urllib.parse.quote(order_id, safe='')}",
                _order_fields,
                want,
            )
        )
    return checks


def _field(name: str) -> Callable[[Any], Any]:
    return lambda body: body.get(name, _NO_ANSWER) if isinstance(body, dict) else _NO_ANSWER


def _open_so(body: Any) -> Any:
    so = body.get("open_supplier_order")
    return None if so is None else [so[name] for name in SO_FIELDS]


def _so_list(body: Any) -> Any:
    items = body["supplier_orders"] if isinstance(body, dict) else body
    return [[d[name] for name in SO_FIELDS] for d in items]


def _window_rows(body: Any) -> Any:
    return [
        [d["window_start"], d["window_end"], d["orders"], d["units"], d["revenue"], d["closed"]]
        for d in body["windows"]
    ]


def _order_fields(body: Any) -> Any:
    return [body["status"], body["backordered_units"], body["level_after"]]


async def _get_all(
    session: aiohttp.ClientSession, base: str, paths: Iterable[str]
) -> dict[str, tuple[int, Any]]:
    limit = asyncio.Semaphore(16)

    async def get(path: str) -> tuple[str, tuple[int, Any]]:
        async with limit:
            try:
                async with session.get(base + path) as response:
                    body = await response.read()
                    try:
                        return path, (response.status, orjson.loads(body))
                    except orjson.JSONDecodeError:
                        return path, (response.status, body.decode(errors="replace")[:80])
            except (aiohttp.ClientError, TimeoutError) as exc:
                return path, (0, f"{NO_ANSWER}: {type(exc).__name__}")

    return dict(await asyncio.gather(*(get(p) for p in dict.fromkeys(paths))))


NO_ANSWER = "no answer"
"""How a check reads when nothing answered at the --check URL."""


def _evaluate(checks: list[Check], answers: dict[str, tuple[int, Any]]) -> list[Mismatch]:
    out = []
    for check in checks:
        status, body = answers[check.path]
        if status != 200:
            actual: Any = f"HTTP {status}: {body}" if status else body
        else:
            try:
                actual = check.extract(body)
            except (KeyError, TypeError, AttributeError) as exc:
                actual = f"unexpected answer ({type(exc).__name__}: {exc})"
        if actual is _NO_ANSWER:
            actual = "missing in answer"
        if actual != check.expected:
            out.append(Mismatch(check.name, check.expected, actual))
    return out


async def run_checks(base: str, checks: list[Check], timeout: float) -> list[Mismatch]:
    """Poll until every check matches or ``timeout`` passes; return what still differs.

    The cheap ``/stats`` checks are polled first: once the worker has processed as many
    events as expected, every other answer is read, again every second until all match.
    """
    deadline = time.monotonic() + timeout
    base = base.rstrip("/")
    stats = [c for c in checks if c.path == "/stats"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            if not _evaluate(stats, await _get_all(session, base, ["/stats"])):
                break
            await asyncio.sleep(0.25)
        while True:
            mismatches = _evaluate(checks, await _get_all(session, base, (c.path for c in checks)))
            if not mismatches or time.monotonic() >= deadline:
                return mismatches
            await asyncio.sleep(1.0)


def _short(value: Any, width: int = 48) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_difference(expected: Any, actual: Any) -> tuple[Any, Any]:
    """For two lists, the first item that differs (with its index); else the values."""
    if isinstance(expected, list) and isinstance(actual, list):
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if e != a:
                return f"[{i}] {_short(e, 40)}", f"[{i}] {_short(a, 40)}"
        return f"{len(expected)} items", f"{len(actual)} items"
    return expected, actual


def mismatch_table(mismatches: list[Mismatch], limit: int = 40) -> str:
    rows = [("check", "expected", "actual")]
    for m in mismatches[:limit]:
        expected, actual = _first_difference(m.expected, m.actual)
        rows.append((m.name, _short(expected), _short(actual)))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    if len(mismatches) > limit:
        lines.append(f"  ... {len(mismatches) - limit} more")
    return "\n".join(lines)
