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
a partition). Between the two topics there is no order: the app's ingest agent reads
``orders`` and ``stock`` side by side and regroups them by SKU (agents/ingest.py), so
an order and a stock move of one SKU produced a few milliseconds apart may meet in
either order, and the level, backorders and supplier orders depend on that order.

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
import heapq
import math
import random
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import orjson

from app.domain.events import InvalidEvent, format_ts, parse_order, parse_stock, parse_ts
from app.domain.models import INITIAL, Order, SkuState, StockMove, SupplierOrder
from app.domain.rules.stock import apply_order, apply_stock

Value = dict[str, Any] | bytes | None
"""A message value: a JSON object, raw bytes (sent as they are), or None (a tombstone)."""

INPUT_TOPICS = ("orders", "stock")

DEFAULT_START = "2026-11-26T09:00:00Z"
"""Scenario time 0 when ``--start`` is not given: fixed, so a run is reproducible."""


class ScenarioError(ValueError):
    """Bad scenario input (unknown name, bad time, bad JSONL line); one-line message."""


class Event(NamedTuple):
    """One message to produce, in production order."""

    topic: str
    "``orders`` or ``stock`` (TOPIC_PREFIX is added by the injector)."
    key: str | None
    "Message key: the SKU for valid events."
    value: Value
    "The message value (see :data:`Value`)."
    ts: float
    "Event time as the app parses it; scenario time for a malformed message."


class Labeled(NamedTuple):
    """An event and what the scenario meant by it (for tests and summaries)."""

    event: Event
    label: str
    "``order``, ``late-order``, ``stock``, ``duplicate`` or ``malformed:<kind>``."


@dataclass(frozen=True, slots=True)
class Rules:
    """The app settings the simulated suppliers need: they deliver against the supplier
    orders the app opens, which these decide."""

    reorder_point: int = 20
    reorder_target: int = 100


@dataclass(frozen=True, slots=True)
class Recipe:
    """The numbers of one scenario. Rates are per second of event time."""

    description: str
    skus: int
    default_count: int
    order_rate_per_sku: float
    "Background orders per second per SKU (0.05 = 5 orders/s per 100 SKUs)."
    zipf_s: float = 1.0
    "Popularity of the SKU of rank r is proportional to 1 / r**zipf_s."
    initial_units: int | None = None
    "Initial delivery per SKU; None = ``par`` (``par_minutes`` of its demand)."
    par_minutes: float = 30.0
    par_floor: int = 50
    refill_below: float = 0.5
    "A stock round refills a SKU without open supplier order below this share of par."
    round_s: int = 300
    "Interval of stock rounds: every stock move is produced at a round."
    lead_s: int = 300
    "A supplier delivers part of a supplier order >= lead_s after it opens, the rest"
    " >= 2 * lead_s after."
    return_p: float = 0.0
    "Share of orders returned (in part) at the next round."
    adjustments_per_round: int = 0
    flash_first_s: int | None = None
    flash_every_s: int = 900
    flash_len_s: int = 120
    flash_skus: int = 3
    flash_rate: float = 0.4
    "Orders per second on each flash SKU during a flash sale."
    flash_max_qty: int = 6
    malformed_ratio: float = 0.0
    "Malformed messages per background order."
    duplicate_ratio: float = 0.0
    late_ratio: float = 0.0


RECIPES: dict[str, Recipe] = {
    "steady": Recipe(
        "steady trade over many SKUs; initial stock, then refills, returns, adjustments",
        skus=200,
        default_count=10_000,
        order_rate_per_sku=0.05,
        return_p=0.02,
        adjustments_per_round=3,
    ),
    "flash-sale": Recipe(
        "bursts of orders on a few SKUs: backlog, supplier orders, expedites",
        skus=100,
        default_count=5_000,
        order_rate_per_sku=0.05,
        round_s=120,
        lead_s=120,
        return_p=0.01,
        flash_first_s=120,
        flash_every_s=600,
        flash_len_s=90,
        flash_rate=0.5,
        flash_max_qty=8,
    ),
    "restock": Recipe(
        "SKUs run low, supplier orders open, deliveries arrive partially then in full",
        skus=20,
        default_count=2_000,
        order_rate_per_sku=0.1,
        initial_units=60,
        refill_below=0.0,
        round_s=60,
        lead_s=60,
    ),
    "malformed": Recipe(
        "valid trade mixed with malformed messages, exact duplicates and late orders",
        skus=10,
        default_count=500,
        order_rate_per_sku=0.2,
        round_s=60,
        lead_s=60,
        adjustments_per_round=1,
        malformed_ratio=0.6,
        duplicate_ratio=0.2,
        late_ratio=0.05,
    ),
    "demo": Recipe(
        "the README story: steady trade, a flash sale, its restock, a few bad messages",
        skus=40,
        default_count=2_000,
        order_rate_per_sku=0.05,
        round_s=120,
        lead_s=120,
        return_p=0.01,
        adjustments_per_round=1,
        flash_first_s=180,
        flash_every_s=900,
        flash_len_s=120,
        malformed_ratio=0.015,
        duplicate_ratio=0.01,
        late_ratio=0.005,
    ),
}

SCENARIOS = tuple(RECIPES)


# --- malformed messages -------------------------------------------------------------

_Malformed = tuple[str, Value]  # (topic, value)


def _bad_order(ctx: dict[str, Any], **changes: Any) -> dict[str, Any]:
    order = dict(ctx["order"])
    for name, value in changes.items():
        if value is _DROP:
            del order[name]
        else:
            order[name] = value
    return order


def _bad_stock(ctx: dict[str, Any], **changes: Any) -> dict[str, Any]:
    move = dict(ctx["stock"])
    move.update(changes)
    return move


_DROP = object()

MALFORMED_KINDS: dict[str, Callable[[dict[str, Any]], _Malformed]] = {
    "bad-json": lambda c: ("orders", orjson.dumps(c["order"])[:-9]),
    "not-an-object": lambda c: ("orders", orjson.dumps([c["order"]["sku"], 2])),
    "empty-value": lambda c: ("stock", b""),
    "tombstone": lambda c: ("orders", None),
    "bad-utf8": lambda c: ("stock", b'{"event_id": "\xff\xfe", "sku": "x"}'),
    "missing-field": lambda c: ("orders", _bad_order(c, quantity=_DROP)),
    "string-quantity": lambda c: ("orders", _bad_order(c, quantity="2")),
    "float-quantity": lambda c: ("orders", _bad_order(c, quantity=2.0)),
    "boolean-quantity": lambda c: ("orders", _bad_order(c, quantity=True)),
    "negative-quantity": lambda c: ("orders", _bad_order(c, quantity=-3)),
    "zero-delivery": lambda c: ("stock", _bad_stock(c, quantity=0)),
    "negative-return": lambda c: ("stock", _bad_stock(c, reason="return", quantity=-2)),
    "bad-reason": lambda c: ("stock", _bad_stock(c, reason="theft")),
    "bad-ts": lambda c: ("orders", _bad_order(c, ts="yesterday")),
    "date-only-ts": lambda c: ("stock", _bad_stock(c, ts=c["stock"]["ts"][:10])),
    "millisecond-ts": lambda c: ("orders", _bad_order(c, ts=c["ms"])),
    "oversize-sku": lambda c: ("orders", _bad_order(c, sku="S" * 65)),
    "oversize-order-id": lambda c: ("orders", _bad_order(c, order_id="O" * 200)),
    "empty-event-id": lambda c: ("stock", _bad_stock(c, event_id="")),
    "null-customer": lambda c: ("orders", _bad_order(c, customer_id=None)),
    "string-price": lambda c: ("orders", _bad_order(c, unit_price="9.99")),
    "negative-price": lambda c: ("orders", _bad_order(c, unit_price=-1.5)),
    "numeric-supplier": lambda c: ("stock", _bad_stock(c, supplier_id=42)),
}
"""Every kind of malformed message a scenario produces: name -> builder. A builder gets
a context with a valid ``order`` and ``stock`` value to spoil and returns (topic, value).
Each one breaks exactly one input rule of the contract."""


def malformed_message(kind: str, sku: str = "SKU-0001", ts_ms: int = 0) -> _Malformed:
    """The ``kind`` malformed message about ``sku`` at ``ts_ms`` (epoch milliseconds)."""
    ts = format_ts(ts_ms / 1000)
    order = {
        "order_id": f"BAD-{kind}-{ts_ms}",
        "customer_id": "C-00001",
        "sku": sku,
        "quantity": 2,
        "unit_price": 9.99,
        "ts": ts,
    }
    stock = {
        "event_id": f"BAD-{kind}-{ts_ms}",
        "sku": sku,
        "reason": "delivery",
        "quantity": 5,
        "supplier_id": "SUP-1",
        "ts": ts,
    }
    return MALFORMED_KINDS[kind]({"order": order, "stock": stock, "ms": ts_ms})


# --- the simulated shop -------------------------------------------------------------

_CET = timezone(timedelta(hours=1))
_ORDER_QTY = (1, 2, 3, 4, 5, 10)
_ORDER_QTY_CUM = (50, 75, 87, 94, 98, 100)
_MEAN_ORDER_QTY = 2.04
_SUPPLIERS = ("SUP-ACME", "SUP-GLOBEX", "SUP-INITECH", "SUP-UMBRELLA")
_CUSTOMERS = 5_000
_RECENT = 200  # how many recent valid events a duplicate is drawn from


class _SupplierPlan(NamedTuple):
    supplier_order_id: str
    partial_due: int
    full_due: int
    partial_done: bool


class _Shop:
    """Discrete-event simulation of one scenario: a heap of timed actions.

    Every action runs at a scenario time in milliseconds and returns the events it
    produces; actions schedule their successors. Ties are broken by scheduling order,
    so the stream depends on the seed only.
    """

    def __init__(self, recipe: Recipe, seed: int, start_ms: int, skus: int, rules: Rules):
        self.recipe = recipe
        self.seed = seed
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.rules = rules
        self.skus = [f"SKU-{i + 1:04d}" for i in range(skus)]
        weights = [1.0 / (rank + 1) ** recipe.zipf_s for rank in range(skus)]
        total = sum(weights)
        self.popularity = [w / total for w in weights]
        self.cum_weights = [sum(weights[: i + 1]) for i in range(skus)]
        self.prices = {sku: self._price() for sku in self.skus}
        self.suppliers = {sku: self.rng.choice(_SUPPLIERS) for sku in self.skus}
        demand = recipe.order_rate_per_sku * skus * _MEAN_ORDER_QTY  # units/s, all SKUs
        self.par = {
            sku: max(recipe.par_floor, math.ceil(demand * p * recipe.par_minutes * 60))
            for sku, p in zip(self.skus, self.popularity, strict=True)
        }
        self.state: dict[str, SkuState] = {}
        self.plans: dict[str, _SupplierPlan] = {}
        self.returns: list[tuple[str, int]] = []
        self.recent: deque[Event] = deque(maxlen=_RECENT)
        self.deck: list[str] = []
        self.orders = 0
        self.moves = 0
        self.bad = 0
        self.flash_round = 0
        self.heap: list[tuple[int, int, Callable[[int], list[Labeled]]]] = []
        self.seq = 0

    # -- engine -------------------------------------------------------------------

    def at(self, t_ms: int, action: Callable[[int], list[Labeled]]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t_ms, self.seq, action))

    def run(self) -> Iterator[Labeled]:
        r = self.recipe
        self.at(0, self._initial_stock)
        self.at(self._gap(r.order_rate_per_sku * len(self.skus)), self._background_order)
        self.at(r.round_s * 1000, self._stock_round)
        if r.flash_first_s is not None:
            self.at(r.flash_first_s * 1000, self._flash_sale)
        noise = r.malformed_ratio + r.duplicate_ratio + r.late_ratio
        if noise > 0:
            self.at(self._gap(noise * r.order_rate_per_sku * len(self.skus)), self._noise)
        while self.heap:
            t_ms, _, action = heapq.heappop(self.heap)
            yield from action(t_ms)

    def _gap(self, rate_per_s: float) -> int:
        """Exponential inter-arrival time in whole milliseconds (at least 1)."""
        return max(1, round(self.rng.expovariate(rate_per_s) * 1000))

    # -- building events --------------------------------------------------------------

    def _price(self) -> float:
        # Shop prices: 19.99, 4.49, 120.00 ... (median about 20).
        whole = max(1, round(self.rng.lognormvariate(3.0, 0.8)))
        cents = self.rng.choice((99, 49, 95, 0))
        return float(f"{whole - 1}.{cents:02d}") if cents else float(whole)

    def _ts(self, t_ms: int) -> tuple[object, float]:
        """The JSON ts of scenario time ``t_ms`` in one of the contract's formats, and
        the float the app will parse from it."""
        ms = self.start_ms + t_ms
        style = self.rng.random()
        if style < 0.8:
            text: object = format_ts(ms / 1000)
        elif style < 0.9:
            text = ms // 1000 if ms % 1000 == 0 else ms / 1000
        else:
            moment = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(_CET)
            text = moment.replace(microsecond=ms % 1000 * 1000).isoformat(timespec="milliseconds")
        return text, parse_ts(text)

    def _order(self, t_ms: int, sku: str, quantity: int, label: str = "order") -> Labeled:
        self.orders += 1
        text, ts = self._ts(t_ms)
        value: dict[str, Any] = {
            "order_id": f"O-{self.seed}-{self.orders}",
            "customer_id": f"C-{self.rng.randrange(_CUSTOMERS):05d}",
            "sku": sku,
            "quantity": quantity,
            "unit_price": self.prices[sku],
            "ts": text,
        }
        if self.rng.random() < 0.2:
            value["channel"] = self.rng.choice(("web", "app", "store"))  # ignored extra
        event = Event("orders", sku, value, ts)
        order = parse_order(orjson.dumps(value))
        state, _, changes = apply_order(
            self._state(sku),
            order,
            reorder_point=self.rules.reorder_point,
            reorder_target=self.rules.reorder_target,
        )
        self._update(sku, state, changes, t_ms)
        if self.recipe.return_p and self.rng.random() < self.recipe.return_p:
            self.returns.append((sku, self.rng.randint(1, quantity)))
        self.recent.append(event)
        return Labeled(event, label)

    def _move(self, t_ms: int, sku: str, reason: str, quantity: int) -> Labeled:
        self.moves += 1
        text, ts = self._ts(t_ms)
        value: dict[str, Any] = {
            "event_id": f"S-{self.seed}-{self.moves}",
            "sku": sku,
            "reason": reason,
            "quantity": quantity,
            "ts": text,
        }
        if reason == "delivery":
            value["supplier_id"] = self.suppliers[sku]
        elif self.rng.random() < 0.5:
            value["supplier_id"] = None
        event = Event("stock", sku, value, ts)
        move = parse_stock(orjson.dumps(value))
        state, changes = apply_stock(
            self._state(sku),
            move,
            reorder_point=self.rules.reorder_point,
            reorder_target=self.rules.reorder_target,
        )
        self._update(sku, state, changes, t_ms)
        self.recent.append(event)
        return Labeled(event, "stock")

    def _state(self, sku: str) -> SkuState:
        return self.state.get(sku, INITIAL)

    def _update(self, sku: str, state: SkuState, changes: list[SupplierOrder], t_ms: int) -> None:
        self.state[sku] = state
        for so in changes:
            if so.status == "open":
                # The supplier answers every supplier order with two deliveries.
                lead = self.recipe.lead_s * 1000
                self.plans[sku] = _SupplierPlan(
                    so.supplier_order_id, t_ms + lead, t_ms + 2 * lead, False
                )

    def _pick_sku(self) -> str:
        return self.skus[bisect(self.cum_weights, self.rng.random() * self.cum_weights[-1])]

    def _quantity(self) -> int:
        return _ORDER_QTY[bisect(_ORDER_QTY_CUM, self.rng.random() * 100)]

    # -- actions -----------------------------------------------------------------------

    def _initial_stock(self, t_ms: int) -> list[Labeled]:
        units = self.recipe.initial_units
        return [self._move(t_ms, sku, "delivery", units or self.par[sku]) for sku in self.skus]

    def _background_order(self, t_ms: int) -> list[Labeled]:
        rate = self.recipe.order_rate_per_sku * len(self.skus)
        self.at(t_ms + self._gap(rate), self._background_order)
        return [self._order(t_ms, self._pick_sku(), self._quantity())]

    def _stock_round(self, t_ms: int) -> list[Labeled]:
        """Every stock move of a round, produced together (see the determinism rule)."""
        self.at(t_ms + self.recipe.round_s * 1000, self._stock_round)
        out = self._supplier_deliveries(t_ms)
        threshold = self.recipe.refill_below
        for sku in self.skus:
            state = self._state(sku)
            if state.open_order is None and state.level < self.par[sku] * threshold:
                out.append(self._move(t_ms, sku, "delivery", self.par[sku] - state.level))
        returns, self.returns = self.returns, []
        out += [self._move(t_ms, sku, "return", units) for sku, units in returns]
        for _ in range(self.recipe.adjustments_per_round):
            delta = self.rng.choice((-3, -2, -1, 1, 2))
            out.append(self._move(t_ms, self.rng.choice(self.skus), "adjustment", delta))
        return out

    def _supplier_deliveries(self, t_ms: int) -> list[Labeled]:
        out: list[Labeled] = []
        for sku, plan in sorted(self.plans.items()):
            so = self._state(sku).open_order
            if so is None or so.supplier_order_id != plan.supplier_order_id:
                del self.plans[sku]  # completed by other deliveries meanwhile
                continue
            remaining = so.quantity - so.delivered
            if not plan.partial_done and t_ms >= plan.partial_due and remaining > 1:
                part = max(1, min(remaining - 1, round(so.quantity * self.rng.uniform(0.4, 0.6))))
                self.plans[sku] = plan._replace(partial_done=True)
                out.append(self._move(t_ms, sku, "delivery", part))
            elif t_ms >= plan.full_due:
                del self.plans[sku]
                # May complete the order and, if the level is still low, open the next
                # one: _update then plans deliveries for that one.
                out.append(self._move(t_ms, sku, "delivery", remaining))
        return out

    def _flash_sale(self, t_ms: int) -> list[Labeled]:
        r = self.recipe
        self.at(t_ms + r.flash_every_s * 1000, self._flash_sale)
        # From the less popular half, in turns: their stock (sized to their usual
        # demand) cannot cover a sale, so they go into backlog.
        pool = self.skus[len(self.skus) // 2 :]
        first = self.flash_round * r.flash_skus % len(pool)
        candidates = (pool[first:] + pool[:first])[: 4 * r.flash_skus]
        self.flash_round += 1
        end = t_ms + r.flash_len_s * 1000
        for sku in self.rng.sample(candidates, min(r.flash_skus, len(candidates))):
            self.at(t_ms + self._gap(r.flash_rate), self._flash_order(sku, end))
        return []

    def _flash_order(self, sku: str, end_ms: int) -> Callable[[int], list[Labeled]]:
        def action(t_ms: int) -> list[Labeled]:
            if t_ms >= end_ms:
                return []
            self.at(t_ms + self._gap(self.recipe.flash_rate), action)
            quantity = self.rng.randint(2, self.recipe.flash_max_qty)
            return [self._order(t_ms, sku, quantity)]

        return action

    def _noise(self, t_ms: int) -> list[Labeled]:
        r = self.recipe
        noise = r.malformed_ratio + r.duplicate_ratio + r.late_ratio
        self.at(t_ms + self._gap(noise * r.order_rate_per_sku * len(self.skus)), self._noise)
        pick = self.rng.random() * noise
        if pick < r.malformed_ratio:
            return [self._malformed(t_ms)]
        if pick < r.malformed_ratio + r.duplicate_ratio and self.recent:
            original = self.rng.choice(self.recent)
            return [Labeled(original, "duplicate")]
        # A late order: delayed on its way, its ts is 1.5 to 10 minutes old.
        late_ms = min(t_ms, self.rng.randint(90_000, 600_000))
        return [self._order(t_ms - late_ms, self._pick_sku(), self._quantity(), "late-order")]

    def _malformed(self, t_ms: int) -> Labeled:
        if not self.deck:
            self.deck = sorted(MALFORMED_KINDS)
            self.rng.shuffle(self.deck)
        kind = self.deck.pop()
        self.bad += 1
        sku = self._pick_sku()
        topic, value = malformed_message(kind, sku, self.start_ms + t_ms)
        key = self.rng.choice((sku, None, "junk-key"))
        if value is None and key is None:
            key = sku  # Kafka takes no message without both key and value
        event = Event(topic, key, value, (self.start_ms + t_ms) / 1000)
        return Labeled(event, f"malformed:{kind}")


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
    shop = _Shop(recipe, seed, round(begin * 1000), skus or recipe.skus, rules or Rules())
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
        moment = datetime.fromtimestamp(ts, tz=UTC).astimezone(_CET)
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
