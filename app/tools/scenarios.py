"""Scripted input for the stock tracker: deterministic scenario generators, pacing, JSONL.

This module owns *what* the injector (``faust -A app inject``, app/tools/commands.py) writes
and *when*, as pure code: no Kafka, no Faust, no clock. A scenario is an endless stream
of :class:`Event` ``(topic, key, value, ts)`` in production order, drawn from one
``random.Random(seed)``: the same name, seed and options always give the same stream,
byte for byte. ``topic`` is a contract input topic without TOPIC_PREFIX (``orders`` or
``stock``); ``key`` is the SKU for every valid event (``None`` or junk for some
malformed ones); ``value`` is a JSON object (a dict), raw bytes (malformed text) or
``None`` (a tombstone); ``ts`` is the message's event time as the app parses it (for a
malformed message, the scenario time it is produced at).

Scenarios (see :data:`RECIPES` for their numbers):

* ``steady``: 200 SKUs with Zipf-like popularity, 5 orders/s of event time per 100
  SKUs; every SKU gets an initial delivery sized to 30 minutes of its demand, and
  every 5 minutes a stock round brings refills, supplier deliveries, customer
  returns and stock-take adjustments.
* ``flash-sale``: background trade, and every 10 minutes a burst of orders on 3 SKUs
  that drives them into backlog, opens supplier orders and triggers expedites.
* ``restock``: 20 SKUs without refills: they drain below the reorder point, supplier
  orders open, deliveries arrive partially then in full (partially_fulfilled ->
  completed), and the cycle repeats.
* ``malformed``: valid trade mixed with every kind of :data:`MALFORMED_KINDS` (dealt
  from shuffled decks, so the first ``len(MALFORMED_KINDS)`` malformed messages cover
  them all), exact duplicates (an earlier message re-sent) and late orders.
* ``demo``: the README story on 40 SKUs: steady trade, a flash sale on 3 SKUs at
  minute 3 (and every 15 minutes after), their restock in two deliveries, and a few
  malformed messages, duplicates and late orders.

The simulated shop keeps a mirror of the app's per-SKU state (:mod:`app.domain.rules.stock`)
so that its suppliers deliver against the supplier orders the app will open.

Determinism rule (why the injector paces its writes)
----------------------------------------------------
Each topic keeps the order of one SKU's messages (they are keyed by SKU, so they share
a partition). Across the two topics the app applies events in event-time order (the
join's merge, app/domain/rules/merge.py): whatever is on the broker when the worker
reads it is applied in the contract's order, whatever the timing. Live, though, an
input partition that is read to its end is not waited for, so a stock move produced
a few milliseconds after an order of the same SKU, with an older ``ts``, can still be
applied after it; the level, backorders and supplier orders depend on that order.
Scenario events are produced in ``ts`` order, and the barriers below make sure the
worker has read everything produced before the other topic's next message.

Rule: when a SKU's next *effective* message (valid and not a duplicate) is on the other
topic than its previous effective message, and that previous one was produced after
the injector's last pacing barrier, the injector first sets a barrier: it flushes the
producer, then waits until the worker's consumer group has read everything produced
so far (``--pace sync``, and ``auto`` when a worker is running), or sleeps ``--gap``
(0.3 s; ``--pace gap``, and ``auto`` without a worker). A gap is enough only while the
worker keeps up with the injector; a worker that reads a backlog (started late, or
slower than the injector) sees both topics side by side again, so for deterministic
results the worker runs while the injector produces. :class:`Pacer` decides where
barriers go. Scenarios keep barriers rare by moving stock in *rounds* (every few
minutes of event time every delivery, return and adjustment is produced at once), so
an hour of ``steady`` trade needs about two barriers per round (23 in all).

Window results need no barrier: stream time advances on orders only, and the orders
of one partition of the app's SKU-keyed stream all come, in production order, from
the same partition of ``orders`` (same key, same partitioner, same partition count).
Malformed messages and duplicates change no state, so they need no barrier either.
Duplicates are re-sent minutes after their original, far inside the app's 24-hour
duplicate memory.

Time
----
Scenario time starts at ``start`` (epoch seconds, from ``--start``) and moves in whole
milliseconds. :class:`Pacing` maps it to wall time (``--speedup``, ``--rate``);
:func:`retime` rewrites a message's ``ts`` for ``--time live``.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from app.domain.events import InvalidEvent, format_ts, parse_order, parse_stock, parse_ts
from app.domain.models import Order, StockMove
from app.tools.scenario_types import (
    DEFAULT_START,
    INPUT_TOPICS,
    RECIPES,
    SCENARIOS,
    Event,
    Labeled,
    Recipe,
    Rules,
    ScenarioError,
    Value,
)
from app.tools.shop import CET, MALFORMED_KINDS, Shop, malformed_message

__all__ = [
    "DEFAULT_START",
    "INPUT_TOPICS",
    "MALFORMED_KINDS",
    "RECIPES",
    "SCENARIOS",
    "Event",
    "Labeled",
    "Pacer",
    "Pacing",
    "Recipe",
    "Rules",
    "ScenarioError",
    "Value",
    "check_jsonl",
    "encode_value",
    "generate",
    "generate_labeled",
    "limit",
    "limit_labeled",
    "malformed_message",
    "parse_event",
    "parse_start",
    "read_jsonl",
    "retime",
    "to_jsonl",
    "write_jsonl",
]


# --- public API: streams ------------------------------------------------------------


def parse_start(text: str) -> float:
    """``--start``: an ISO-8601 time (no offset = UTC) or epoch seconds; to whole ms."""
    raw: object = text
    with contextlib.suppress(ValueError):
        raw = float(text)
    try:
        ts = parse_ts(raw, "--start")
    except InvalidEvent as exc:
        raise ScenarioError(str(exc)) from None
    return round(ts * 1000) / 1000


def generate_labeled(
    name: str,
    seed: int = 1,
    *,
    start: float | None = None,
    skus: int | None = None,
    rules: Rules | None = None,
) -> Iterator[Labeled]:
    """The endless labeled stream of scenario ``name`` (raises ScenarioError if unknown)."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise ScenarioError(f"unknown scenario {name!r} (one of: {', '.join(SCENARIOS)})")
    if skus is not None and skus < 1:
        raise ScenarioError(f"the number of SKUs must be >= 1, got {skus}")
    begin = parse_start(DEFAULT_START) if start is None else start
    shop = Shop(recipe, seed, round(begin * 1000), skus or recipe.skus, rules or Rules())
    return shop.run()


def generate(
    name: str,
    seed: int = 1,
    *,
    start: float | None = None,
    skus: int | None = None,
    rules: Rules | None = None,
) -> Iterator[Event]:
    """The endless stream of scenario ``name``: :class:`Event` in production order."""
    return (
        item.event for item in generate_labeled(name, seed, start=start, skus=skus, rules=rules)
    )


T = TypeVar("T")


def limit(
    events: Iterable[Event],
    *,
    count: int | None = None,
    duration: float | None = None,
    origin: float | None = None,
) -> Iterator[Event]:
    """The first ``count`` events, or those before ``origin + duration`` of event time.

    Event time here is the scenario clock (the largest ts so far), so a late order
    never ends the stream early; ``origin`` defaults to the first event's ts.
    """
    return _limit(events, lambda e: e.ts, count, duration, origin)


def limit_labeled(
    items: Iterable[Labeled],
    *,
    count: int | None = None,
    duration: float | None = None,
    origin: float | None = None,
) -> Iterator[Labeled]:
    """:func:`limit` for labeled events."""
    return _limit(items, lambda item: item.event.ts, count, duration, origin)


def _limit(
    items: Iterable[T],
    ts_of: Callable[[T], float],
    count: int | None,
    duration: float | None,
    origin: float | None,
) -> Iterator[T]:
    if count is not None:
        for n, item in enumerate(items):
            if n >= count:
                return
            yield item
        return
    if duration is None:
        yield from items
        return
    clock = -math.inf
    for item in items:
        ts = ts_of(item)
        if origin is None:
            origin = ts
        clock = max(clock, ts)
        if clock >= origin + duration:
            return
        yield item


def encode_value(value: Value) -> bytes | None:
    """The bytes a value is produced as: dicts as compact JSON, bytes as they are."""
    if isinstance(value, dict):
        return orjson.dumps(value)
    return value


def parse_event(event: Event) -> Order | StockMove | None:
    """What the app makes of the event: the valid order or move, or None if malformed."""
    raw = encode_value(event.value)
    try:
        return parse_order(raw) if event.topic == "orders" else parse_stock(raw)
    except InvalidEvent:
        return None


# --- public API: pacing and time ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pacing:
    """When each event is due, in wall seconds after the first one.

    ``speedup``: seconds of event time per wall second (None: not paced by event
    time); ``rate``: most events per wall second (None: unlimited). With both, an
    event waits for the later of the two.
    """

    speedup: float | None = None
    rate: float | None = None

    def due(self, index: int, event_offset_s: float) -> float:
        by_time = event_offset_s / self.speedup if self.speedup else 0.0
        by_rate = index / self.rate if self.rate else 0.0
        return max(by_time, by_rate, 0.0)


class Pacer:
    """Where the determinism rule (module docstring) needs a barrier.

    Call :meth:`needs_barrier` before producing each event, in order, and set a
    barrier when it says so, before producing the event. It tracks, per SKU, the topic of its last
    effective event since the last barrier, and the ids already seen (a re-sent id is
    a duplicate and changes nothing, wherever it lands).
    """

    def __init__(self) -> None:
        self._since_barrier: dict[str, str] = {}
        self._seen: set[tuple[str, str, str]] = set()

    def needs_barrier(self, event: Event) -> bool:
        parsed = parse_event(event)
        if parsed is None:
            return False
        ident = parsed.order_id if isinstance(parsed, Order) else parsed.event_id
        key = (event.topic, parsed.sku, ident)
        if key in self._seen:
            return False
        self._seen.add(key)
        previous = self._since_barrier.get(parsed.sku)
        barrier = previous is not None and previous != event.topic
        if barrier:
            # The caller sets the barrier before producing this event: everything
            # produced so far is then ordered before everything produced after it.
            self._since_barrier.clear()
        self._since_barrier[parsed.sku] = event.topic
        return barrier


def retime(event: Event, now: float, clock: float) -> Event:
    """``event`` for ``--time live``: its ts moved to ``now`` minus its lateness.

    ``clock`` is the scenario time the event is produced at (the largest ts so far), so
    a late order stays as late as in the scenario. Only a value whose ``ts`` is the
    event's own valid time is rewritten, in the same format: a malformed ts stays
    malformed.
    """
    value = event.value
    if not isinstance(value, dict) or "ts" not in value:
        return event
    try:
        if parse_ts(value["ts"]) != event.ts:
            return event
    except InvalidEvent:
        return event
    ts = round((now - (clock - event.ts)) * 1000) / 1000
    old = value["ts"]
    if isinstance(old, str) and old.endswith("Z"):
        text: object = format_ts(ts)
    elif isinstance(old, str):
        moment = datetime.fromtimestamp(ts, tz=UTC).astimezone(CET)
        text = moment.isoformat(timespec="milliseconds")
    else:
        text = ts
    return event._replace(value={**value, "ts": text}, ts=parse_ts(text))


# --- public API: JSONL --------------------------------------------------------------


def to_jsonl(event: Event) -> bytes:
    """One line (without newline): ``{"topic", "key", "value" | "value_b64", "ts"}``."""
    line: dict[str, Any] = {"topic": event.topic, "key": event.key}
    value = event.value
    if isinstance(value, bytes):
        try:
            line["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            line["value_b64"] = base64.b64encode(value).decode("ascii")
    else:
        line["value"] = value
    line["ts"] = event.ts
    return orjson.dumps(line)


def write_jsonl(events: Iterable[Event], out: IO[bytes]) -> int:
    """Write events as JSONL; return how many."""
    n = 0
    for event in events:
        out.write(to_jsonl(event) + b"\n")
        n += 1
    return n


def read_jsonl(path: Path) -> list[Event]:
    """Read a JSONL file of events; raise ScenarioError naming the first bad line.

    Per line: ``topic`` (``orders`` or ``stock``), ``key`` (string or null, optional),
    ``value``: a JSON object (produced as compact JSON), a string (raw text, produced
    as it is), null (a tombstone) or any other JSON (produced as JSON); or instead
    ``value_b64``: raw bytes in base64. ``ts`` (optional): the event time used for
    pacing; without it, the value's valid ``ts``, else the previous line's.
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    events: list[Event] = []
    pending: list[int] = []  # indexes of events still waiting for a ts
    last: float | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event, ts = _jsonl_event(line)
        except ScenarioError as exc:
            raise ScenarioError(f"{path}:{number}: {exc}") from None
        if ts is None:
            ts = last
        if ts is None:
            pending.append(len(events))
        else:
            for i in pending:  # lines before the first known time get that time
                events[i] = events[i]._replace(ts=ts)
            pending.clear()
            last = ts
        events.append(event._replace(ts=0.0 if ts is None else ts))
    return events


def check_jsonl(path: Path) -> Iterator[tuple[int, str | None]]:
    """Check a JSONL file of events line by line, producing nothing.

    Yields (line number, problem) for every non-blank line: problem is None when the
    line is an event the worker accepts, else why the line cannot be read or why the
    worker would dead-letter its value (the validator's own reason, app/domain/events.py, of
    which the published schemas are built, app/domain/schemas.py). Raises ScenarioError only
    when the file cannot be read.
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event, _ = _jsonl_event(line)
        except ScenarioError as exc:
            yield number, f"not an event line: {exc}"
            continue
        raw = encode_value(event.value)
        try:
            parse_order(raw) if event.topic == "orders" else parse_stock(raw)
        except InvalidEvent as exc:
            yield number, f"{event.topic}: {exc}"
            continue
        yield number, None


def _jsonl_event(line: bytes) -> tuple[Event, float | None]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ScenarioError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ScenarioError("a line must be a JSON object")
    topic = obj.get("topic")
    if topic not in INPUT_TOPICS:
        raise ScenarioError(f"topic must be one of {', '.join(INPUT_TOPICS)}, got {topic!r}")
    key = obj.get("key")
    if key is not None and not isinstance(key, str):
        raise ScenarioError(f"key must be a string or null, got {key!r}")
    if ("value" in obj) == ("value_b64" in obj):
        raise ScenarioError("give exactly one of value and value_b64")
    value: Value
    if "value_b64" in obj:
        try:
            value = base64.b64decode(obj["value_b64"], validate=True)
        except (ValueError, TypeError):
            raise ScenarioError("value_b64 is not valid base64") from None
    elif isinstance(obj["value"], str):
        value = obj["value"].encode("utf-8")
    elif obj["value"] is None or isinstance(obj["value"], dict):
        value = obj["value"]
    else:
        value = orjson.dumps(obj["value"])
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise ScenarioError(f"ts must be a number of seconds, got {ts!r}")
    if value is None and key is None:
        raise ScenarioError("a null value (a tombstone) needs a key")
    event = Event(topic, key, value, 0.0)
    if ts is None:
        parsed = parse_event(event)
        ts = None if parsed is None else parsed.ts
    return event, None if ts is None else float(ts)
