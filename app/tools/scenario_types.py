"""The vocabulary of scripted input: events, their labels, the scenarios' recipes.

Shared by the simulated shop (app/tools/shop.py) and the public scenario API
(app/tools/scenarios.py, which re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

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
