"""The stock management and stock tracker rules (app.rules.stock) and their state."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.models import (
    INITIAL,
    Order,
    OrderStatus,
    SkuState,
    StockMove,
    StockReason,
    SupplierOrder,
)
from app.domain.rules.stock import apply_order, apply_stock

# Shared CI machines make timings noisy, and examples need not be kept in the repo.
PROPERTY = settings(deadline=None, database=None)
POINT = 20
TARGET = 100
SKU = "SKU-1"
T0 = 1795694400.0


def order(quantity: int, *, ts: float = T0, order_id: str = "o-1") -> Order:
    return Order(order_id, "c-1", SKU, quantity, Decimal("9.99"), ts)


def stock(
    quantity: int, reason: StockReason = "delivery", *, ts: float = T0, event_id: str = "s-1"
) -> StockMove:
    return StockMove(event_id, SKU, reason, quantity, None, ts)


def state(level: int, *, opened: int = 0, open_order: SupplierOrder | None = None) -> SkuState:
    return SkuState(level, T0 - 60, opened, open_order)


def supplier_order(
    n: int = 1,
    quantity: int = 100,
    delivered: int = 0,
    status: Any = "open",
    ts: float = T0 - 60,
) -> SupplierOrder:
    return SupplierOrder(f"SO-{SKU}-{n}", SKU, quantity, delivered, status, T0 - 60, ts)


def on_order(current: SkuState, event: Order) -> tuple[SkuState, OrderStatus, list[SupplierOrder]]:
    return apply_order(current, event, reorder_point=POINT, reorder_target=TARGET)


def on_stock(current: SkuState, event: StockMove) -> tuple[SkuState, list[SupplierOrder]]:
    return apply_stock(current, event, reorder_point=POINT, reorder_target=TARGET)


# --- orders: status and level ------------------------------------------------------


def test_order_covered_by_the_level_is_allocated() -> None:
    new, status, _ = on_order(state(50), order(30))
    assert status == OrderStatus("o-1", SKU, 30, "allocated", 0, 50, 20, T0)
    assert (new.level, new.updated_ts) == (20, T0)


def test_order_exactly_the_level_is_allocated() -> None:
    _, status, _ = on_order(state(30), order(30))
    assert (status.status, status.backordered_units, status.level_after) == ("allocated", 0, 0)


def test_order_beyond_the_level_backorders_the_missing_units() -> None:
    _, status, _ = on_order(state(3), order(5))
    assert (status.status, status.backordered_units, status.level_after) == ("backordered", 2, -2)


def test_order_on_a_backlog_backorders_everything() -> None:
    _, status, _ = on_order(state(-4), order(5))
    assert (status.status, status.backordered_units, status.level_after) == ("backordered", 5, -9)
    _, status, _ = on_order(state(0), order(1))
    assert (status.status, status.backordered_units) == ("backordered", 1)


# --- reorder rule ------------------------------------------------------------------


def test_level_at_the_reorder_point_does_not_reorder() -> None:
    new, _, changes = on_order(state(25), order(5))
    assert (new.level, new.open_order, changes) == (20, None, [])


def test_level_below_the_reorder_point_opens_a_supplier_order() -> None:
    new, _, changes = on_order(state(25), order(6))
    expected = SupplierOrder(f"SO-{SKU}-1", SKU, TARGET - 19, 0, "open", T0, T0)
    assert changes == [expected]
    assert new == SkuState(19, T0, 1, expected)
    assert expected.is_open


def test_stock_events_also_trigger_the_reorder_rule() -> None:
    new, changes = on_stock(state(30), stock(-10, "adjustment"))
    assert (new.level, changes) == (20, [])
    new, changes = on_stock(state(30), stock(-11, "adjustment"))
    assert [(so.supplier_order_id, so.quantity) for so in changes] == [(f"SO-{SKU}-1", 81)]
    new, changes = on_stock(state(-40), stock(5, "return"))
    assert [(so.supplier_order_id, so.quantity) for so in changes] == [(f"SO-{SKU}-1", 135)]


def test_no_second_supplier_order_while_one_is_open() -> None:
    current, _, first = on_order(INITIAL, order(5))
    current, _, second = on_order(current, order(5, order_id="o-2"))
    assert [so.supplier_order_id for so in first] == [f"SO-{SKU}-1"]
    assert second == []
    assert current.open_order == first[0]
    assert current.level == -10


def test_supplier_order_ids_count_up_per_sku() -> None:
    current = INITIAL
    ids = []
    for i in range(3):
        current, _, changes = on_order(current, order(81, order_id=f"o-{i}"))
        ids += [so.supplier_order_id for so in changes if so.status == "open"]
        assert current.open_order is not None
        current, changes = on_stock(current, stock(current.open_order.quantity))
        assert [so.status for so in changes] == ["completed"]
    assert ids == [f"SO-{SKU}-1", f"SO-{SKU}-2", f"SO-{SKU}-3"]
    assert current.supplier_orders_opened == 3


# --- reconciliation ----------------------------------------------------------------


def test_deliveries_partially_fulfil_then_complete_the_supplier_order() -> None:
    current = state(10, opened=1, open_order=supplier_order(quantity=90))
    current, changes = on_stock(current, stock(40, ts=T0))
    partial = supplier_order(quantity=90, delivered=40, status="partially_fulfilled", ts=T0)
    assert changes == [partial]
    assert current == SkuState(50, T0, 1, partial)
    assert partial.is_open

    current, changes = on_stock(current, stock(50, ts=T0 + 1))
    done = supplier_order(quantity=90, delivered=90, status="completed", ts=T0 + 1)
    assert changes == [done]
    assert not done.is_open
    assert current == SkuState(100, T0 + 1, 1, None)


def test_over_delivery_counts_in_full_and_completes() -> None:
    current = state(10, opened=1, open_order=supplier_order(quantity=90, delivered=30))
    current, changes = on_stock(current, stock(200))
    assert [(so.delivered, so.status) for so in changes] == [(230, "completed")]
    assert (current.level, current.open_order) == (210, None)


def test_completion_below_the_point_immediately_reorders() -> None:
    current = state(-200, opened=1, open_order=supplier_order(quantity=150))
    current, changes = on_stock(current, stock(150))
    assert [(so.supplier_order_id, so.status, so.quantity, so.delivered) for so in changes] == [
        (f"SO-{SKU}-1", "completed", 150, 150),
        (f"SO-{SKU}-2", "open", TARGET + 50, 0),
    ]
    assert current.level == -50
    assert current.open_order == changes[1]
    assert current.supplier_orders_opened == 2


def test_returns_and_adjustments_do_not_count_against_the_supplier_order() -> None:
    so = supplier_order(quantity=90)
    for move in (stock(500, "return"), stock(500, "adjustment")):
        current, changes = on_stock(state(10, opened=1, open_order=so), move)
        assert changes == []
        assert (current.level, current.open_order) == (510, so)


def test_delivery_without_a_supplier_order_only_moves_the_level() -> None:
    current, changes = on_stock(state(40), stock(25))
    assert changes == []
    assert current == SkuState(65, T0, 0, None)


# --- state storage -----------------------------------------------------------------


def test_initial_state() -> None:
    assert SkuState(0, 0.0, 0, None) == INITIAL


def test_state_round_trips_through_json() -> None:
    for current in (
        INITIAL,
        state(
            -3, opened=4, open_order=supplier_order(4, delivered=7, status="partially_fulfilled")
        ),
    ):
        stored = orjson.loads(orjson.dumps(current.to_dict()))
        assert SkuState.from_dict(stored) == current


# --- properties over any sequence of events ----------------------------------------


class Step(NamedTuple):
    state: SkuState
    status: OrderStatus | None
    changes: list[SupplierOrder]


def replay(
    events: list[Order | StockMove], point: int, target: int, *, via_json: bool = False
) -> list[Step]:
    current = INITIAL
    steps = []
    for event in events:
        if via_json:  # what a table does between events
            current = SkuState.from_dict(orjson.loads(orjson.dumps(current.to_dict())))
        if isinstance(event, Order):
            current, status, changes = apply_order(
                current, event, reorder_point=point, reorder_target=target
            )
        else:
            status = None
            current, changes = apply_stock(
                current, event, reorder_point=point, reorder_target=target
            )
        steps.append(Step(current, status, changes))
    return steps


Scenario = tuple[list[Order | StockMove], int, int]
REASONS: dict[str, StockReason] = {
    "delivery": "delivery",
    "return": "return",
    "adjustment": "adjustment",
}


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    point = draw(st.integers(-20, 60))
    target = draw(st.integers(point + 1, point + 150))
    specs = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("order"), st.integers(1, 60)),
                st.tuples(st.sampled_from(["delivery", "return"]), st.integers(1, 120)),
                st.tuples(st.just("adjustment"), st.integers(-50, 50).filter(bool)),
            ),
            max_size=40,
        )
    )
    events: list[Order | StockMove] = []
    for i, (kind, quantity) in enumerate(specs):
        ts = T0 + i
        if kind == "order":
            events.append(order(quantity, ts=ts, order_id=f"o-{i}"))
        else:
            events.append(stock(quantity, REASONS[kind], ts=ts, event_id=f"s-{i}"))
    return events, point, target


@PROPERTY
@given(scenarios())
def test_level_is_stock_minus_orders(scenario: Scenario) -> None:
    events, point, target = scenario
    expected = 0
    for event, step in zip(events, replay(events, point, target), strict=True):
        expected += -event.quantity if isinstance(event, Order) else event.quantity
        assert step.state.level == expected
        assert step.state.updated_ts == event.ts
        if step.status is not None:
            before = step.status.level_before
            assert step.status.level_after == step.state.level
            assert step.status.backordered_units == (
                0 if before >= event.quantity else event.quantity - max(before, 0)
            )
            assert (step.status.status == "allocated") == (step.status.backordered_units == 0)


@PROPERTY
@given(scenarios())
def test_at_most_one_open_supplier_order(scenario: Scenario) -> None:
    events, point, target = scenario
    latest: dict[str, SupplierOrder] = {}
    for step in replay(events, point, target):
        latest.update((so.supplier_order_id, so) for so in step.changes)
        still_open = [so for so in latest.values() if so.is_open]
        assert len(still_open) <= 1
        assert step.state.open_order == (still_open[0] if still_open else None)
        # The reorder rule has run: a level below the point always has an open order.
        if step.state.level < point:
            assert step.state.open_order is not None


@PROPERTY
@given(scenarios())
def test_supplier_order_ids_increase_without_gaps(scenario: Scenario) -> None:
    events, point, target = scenario
    opened = [
        so.supplier_order_id
        for step in replay(events, point, target)
        for so in step.changes
        if so.status == "open"
    ]
    assert opened == [f"SO-{SKU}-{n}" for n in range(1, len(opened) + 1)]


@PROPERTY
@given(scenarios())
def test_supplier_orders_only_move_forward(scenario: Scenario) -> None:
    events, point, target = scenario
    allowed = {
        None: {"open"},
        "open": {"partially_fulfilled", "completed"},
        "partially_fulfilled": {"partially_fulfilled", "completed"},
        "completed": set(),
    }
    latest: dict[str, SupplierOrder] = {}
    for step in replay(events, point, target):
        for so in step.changes:
            previous = latest.get(so.supplier_order_id)
            assert so.status in allowed[previous.status if previous else None]
            if previous is None:
                assert so.delivered == 0
                assert so.quantity > 0
            else:
                assert so.delivered > previous.delivered
                assert (so.quantity, so.created_ts) == (previous.quantity, previous.created_ts)
            assert (so.status == "completed") == (so.delivered >= so.quantity)
            latest[so.supplier_order_id] = so


@PROPERTY
@given(scenarios())
def test_replay_is_deterministic(scenario: Scenario) -> None:
    events, point, target = scenario
    first = replay(events, point, target)
    assert replay(events, point, target) == first
    # Storing the state as JSON between events (as a table does) changes nothing.
    assert replay(events, point, target, via_json=True) == first
