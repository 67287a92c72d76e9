"""The simulated shop behind the scenarios, and the malformed messages they mix in.

The shop keeps a mirror of the app's per-SKU state (:mod:`app.domain.rules.stock`) so
that its suppliers deliver against the supplier orders the app will open. Pure code:
no Kafka, no Faust, no clock; every draw comes from the one ``random.Random`` it is given.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson

from app.domain.events import format_ts, parse_order, parse_stock, parse_ts
from app.domain.models import INITIAL, SkuState, SupplierOrder
from app.domain.rules.stock import apply_order, apply_stock
from app.tools.scenario_types import Event, Labeled, Recipe, Rules, Value

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

CET = timezone(timedelta(hours=1))
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


class Shop:
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
            moment = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(CET)
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
