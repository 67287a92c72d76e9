"""Unit and property tests of app.rules.windows (pure: no Faust, no Kafka)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.rules.windows import (
    EMPTY,
    ClosedWindow,
    Expedite,
    PartitionWindows,
    StoredWindow,
    WindowAgg,
    WindowKey,
    WindowSpec,
    add,
    agg_from_json,
    agg_to_json,
    assign,
    closes_at,
    hopping,
    idle_stream_time,
    is_closed,
    parse_window_key,
    revenue_cents,
    revenue_out,
    revenue_str,
    tumbling,
    window_key_str,
    window_starts,
)

BASE = 1_764_158_400  # 2025-11-26T12:00:00Z, a multiple of 60 and of 300
TUMBLING = tumbling(60)
HOPPING = hopping(300, 60)
GRACE = 10

Order = tuple[str, float, int, Decimal]  # sku, ts, quantity, unit_price
MakeWindows = Callable[..., PartitionWindows]


@pytest.fixture
def make() -> MakeWindows:
    """Factory of PartitionWindows with the contract's defaults, overridable."""

    def _make(
        tumbling_s: int = 60,
        hopping_s: int = 300,
        step_s: int = 60,
        grace_s: int = GRACE,
        threshold: int = 2,
    ) -> PartitionWindows:
        return PartitionWindows(
            [tumbling(tumbling_s), hopping(hopping_s, step_s)], grace_s, threshold
        )

    return _make


def order(sku: str, offset: float, quantity: int = 1, price: str = "1.00") -> Order:
    return (sku, BASE + offset, quantity, Decimal(price))


class Run:
    """Everything a PartitionWindows produced for a stream of orders."""

    def __init__(self) -> None:
        self.closed: list[ClosedWindow] = []
        self.late: list[int] = []
        self.expedites: list[Expedite] = []
        self.changed: list[list[WindowKey]] = []


def feed(
    pw: PartitionWindows,
    orders: Iterable[Order],
    close_after: Callable[[int], bool] = lambda _i: True,
    run: Run | None = None,
) -> Run:
    """Apply orders, calling close_due after order i when close_after(i)."""
    run = Run() if run is None else run
    for i, (sku, ts, qty, price) in enumerate(orders):
        res = pw.apply_order(sku, ts, qty, price)
        run.late.append(res.late)
        run.expedites.extend(res.expedites)
        run.changed.append(res.changed)
        if close_after(i):
            run.closed.extend(pw.close_due())
    return run


def closed_map(closed: Iterable[ClosedWindow]) -> dict[WindowKey, WindowAgg]:
    return {c.key: c.agg for c in closed}


# ------------------------------------------------------------------------ specs


def test_tumbling_spec_has_step_equal_to_size() -> None:
    assert tumbling(60) == WindowSpec("tumbling", 60, 60)
    assert tumbling(60).windows_per_ts == 1


def test_hopping_spec() -> None:
    assert hopping(300, 60) == WindowSpec("hopping", 300, 60)
    assert hopping(300, 60).windows_per_ts == 5
    assert hopping(60, 60).windows_per_ts == 1


@pytest.mark.parametrize("size", [0, -60])
def test_tumbling_rejects_non_positive_size(size: int) -> None:
    with pytest.raises(ValueError, match="size_s"):
        tumbling(size)


@pytest.mark.parametrize(
    ("size", "step", "match"),
    [
        (0, 60, "size_s"),
        (300, 0, "step_s"),
        (300, -60, "step_s"),
        (60, 300, "<= size_s"),
        (300, 70, "multiple"),
        (90, 60, "multiple"),
    ],
)
def test_hopping_rejects_bad_sizes(size: int, step: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hopping(size, step)


def test_spec_rejects_non_integer_seconds() -> None:
    with pytest.raises(ValueError, match="integer"):
        tumbling(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer"):
        hopping(300, True)


# ------------------------------------------------------------------- assignment


@pytest.mark.parametrize(
    ("ts", "start"),
    [
        (BASE, BASE),  # exactly on the edge: the window starting there
        (BASE + 59, BASE),
        (BASE + 59.999, BASE),
        (math.nextafter(BASE + 60.0, 0.0), BASE),  # the last float before the edge
        (BASE + 60, BASE + 60),  # end is exclusive
        (BASE + 60.0, BASE + 60),
        (BASE - 0.001, BASE - 60),
        (0, 0),
        (59.99999999999999, 0),
    ],
)
def test_tumbling_window_starts_at_edges(ts: float, start: int) -> None:
    assert window_starts(TUMBLING, ts) == [start]


def test_hopping_window_starts_on_an_edge() -> None:
    assert window_starts(HOPPING, BASE + 60) == [
        BASE - 180,
        BASE - 120,
        BASE - 60,
        BASE,
        BASE + 60,
    ]


def test_hopping_window_starts_just_before_an_edge() -> None:
    assert window_starts(HOPPING, BASE + 59.5) == [
        BASE - 240,
        BASE - 180,
        BASE - 120,
        BASE - 60,
        BASE,
    ]


@pytest.mark.parametrize("offset", [0, 0.5, 1, 59, 59.999, 60, 61, 299, 300, 301, 1234.5])
@pytest.mark.parametrize("spec", [hopping(300, 60), hopping(60, 15), hopping(10, 1), TUMBLING])
def test_every_ts_is_in_size_over_step_windows(spec: WindowSpec, offset: float) -> None:
    ts = BASE + offset
    starts = window_starts(spec, ts)
    assert len(starts) == spec.size_s // spec.step_s
    assert starts == sorted(starts)
    assert all(s % spec.step_s == 0 and s <= ts < s + spec.size_s for s in starts)


def test_window_starts_are_ints_for_float_ts() -> None:
    assert all(type(s) is int for s in window_starts(HOPPING, BASE + 0.25))


def test_closes_at_is_end_plus_grace() -> None:
    assert closes_at(TUMBLING, BASE, GRACE) == BASE + 60 + GRACE
    assert closes_at(HOPPING, BASE, GRACE) == BASE + 300 + GRACE


def test_window_is_closed_exactly_at_end_plus_grace() -> None:
    assert is_closed(TUMBLING, BASE, BASE + 70, GRACE)
    assert is_closed(TUMBLING, BASE, BASE + 70.5, GRACE)
    assert not is_closed(TUMBLING, BASE, BASE + 69, GRACE)
    assert not is_closed(TUMBLING, BASE, BASE + 69.999, GRACE)
    assert not is_closed(TUMBLING, BASE, None, GRACE)


def test_assign_order_that_advances_stream_time_is_never_late() -> None:
    assert assign(HOPPING, BASE + 1000, BASE + 10, GRACE) == (
        window_starts(HOPPING, BASE + 1000),
        [],
    )
    assert assign(TUMBLING, BASE, None, 0) == ([BASE], [])


def test_assign_splits_open_and_late_windows() -> None:
    # Stream time BASE + 70 closed the windows ending at BASE + 60 (grace 10).
    open_starts, late = assign(HOPPING, BASE + 30, BASE + 70, GRACE)
    assert late == [BASE - 240]
    assert open_starts == [BASE - 180, BASE - 120, BASE - 60, BASE]
    assert assign(TUMBLING, BASE + 30, BASE + 70, GRACE) == ([], [BASE])
    assert assign(TUMBLING, BASE + 30, BASE + 69, GRACE) == ([BASE], [])


# ------------------------------------------------------------------- aggregates


def test_add_counts_orders_units_and_revenue() -> None:
    agg = add(add(EMPTY, 2, Decimal("1.50")), 3, Decimal("0.25"))
    assert agg == WindowAgg(orders=2, units=5, revenue=Decimal("3.75"))


def test_revenue_is_exact() -> None:
    assert add(EMPTY, 3, Decimal("0.1")).revenue == Decimal("0.3")
    agg = EMPTY
    for _ in range(3):
        agg = add(agg, 1, Decimal("0.1"))
    assert agg.revenue == Decimal("0.3")


def test_revenue_is_not_rounded_to_the_default_context_precision() -> None:
    long_price = Decimal("0.1000000000000000055511151231257827021181583404541015625")
    agg = add(add(EMPTY, 3, long_price), 1, Decimal("1e30"))
    assert agg.revenue == Decimal(
        "1000000000000000000000000000000.3000000000000000166533453693773481063544750213623046875"
    )


@pytest.mark.parametrize(
    ("revenue", "text"),
    [
        ("0.125", "0.12"),  # half-even: down to the even cent
        ("0.135", "0.14"),  # half-even: up to the even cent
        ("0.1251", "0.13"),
        ("10", "10.00"),
        ("0", "0.00"),
        ("0.3", "0.30"),
        ("123456789.005", "123456789.00"),
        ("1E+3", "1000.00"),
    ],
)
def test_revenue_rounds_half_even_to_cents(revenue: str, text: str) -> None:
    assert revenue_cents(Decimal(revenue)) == text
    assert revenue_str(Decimal(revenue)) == text
    assert revenue_out(Decimal(revenue)) == float(text)


def test_revenue_out_serializes_to_the_rounded_digits() -> None:
    assert repr(revenue_out(Decimal("0.125"))) == "0.12"
    assert repr(revenue_out(add(EMPTY, 3, Decimal("0.1")).revenue)) == "0.3"


def test_agg_json_round_trip_keeps_revenue_exact() -> None:
    agg = WindowAgg(3, 7, Decimal("0.1000000000000000055511151231257827"))
    data = agg_to_json(agg)
    assert data == {"orders": 3, "units": 7, "revenue": "0.1000000000000000055511151231257827"}
    assert agg_from_json(data) == agg
    assert agg_from_json(agg_to_json(EMPTY)) == EMPTY


@pytest.mark.parametrize(
    "data",
    [
        {"orders": 1, "units": 1},
        {"orders": 1, "units": 1, "revenue": 1.5},
        {"orders": 1, "units": 1, "revenue": "abc"},
        {"orders": 1, "units": 1, "revenue": "NaN"},
        {"orders": 1, "units": 1, "revenue": "Infinity"},
        {"orders": "1", "units": 1, "revenue": "1"},
        {"orders": True, "units": 1, "revenue": "1"},
        {"orders": -1, "units": 1, "revenue": "1"},
        {"orders": 1, "revenue": "1"},
    ],
)
def test_agg_from_json_rejects_malformed(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="window aggregate"):
        agg_from_json(data)


# ------------------------------------------------------------------- table keys


@pytest.mark.parametrize("sku", ["SKU-1", "a|b", "|", "||x||", "tumbling|60|x", "é 漢字", ""])
@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
def test_window_key_round_trip(sku: str, kind: str) -> None:
    key: WindowKey = (sku, kind, BASE)  # type: ignore[assignment]
    assert parse_window_key(window_key_str(key)) == key


def test_window_key_text() -> None:
    assert window_key_str(("a|b", "hopping", BASE)) == f"hopping|00{BASE}|a|b"
    assert window_key_str(("x", "tumbling", 60)) == "tumbling|000000000060|x"


def test_window_keys_of_one_kind_sort_by_start() -> None:
    keys = [("z", "tumbling", 600), ("a", "tumbling", 60), ("m", "tumbling", BASE)]
    texts = sorted(window_key_str(k) for k in keys)  # type: ignore[arg-type]
    assert [parse_window_key(t)[2] for t in texts] == [60, 600, BASE]


@pytest.mark.parametrize(
    "text",
    ["", "tumbling", "tumbling|60", "sliding|000000000060|x", "tumbling|60|x", "tumbling|x|y"],
)
def test_parse_window_key_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="bad window key"):
        parse_window_key(text)


# ------------------------------------------------------------ PartitionWindows


def test_partition_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="one window spec per kind"):
        PartitionWindows([tumbling(60), tumbling(120)], GRACE, 2)
    with pytest.raises(ValueError, match="grace_s"):
        PartitionWindows([TUMBLING], -1, 2)
    with pytest.raises(ValueError, match="expedite_threshold"):
        PartitionWindows([TUMBLING], GRACE, -1)
    with pytest.raises(ValueError, match="multiple"):
        PartitionWindows([WindowSpec("hopping", 90, 60)], GRACE, 2)
    with pytest.raises(ValueError, match="step_s == size_s"):
        PartitionWindows([WindowSpec("tumbling", 60, 30)], GRACE, 2)


def test_first_order_opens_one_tumbling_and_five_hopping_windows(make: MakeWindows) -> None:
    pw = make()
    res = pw.apply_order("a", BASE + 30, 2, Decimal("1.25"))
    assert res.late == 0
    assert not res.is_late
    assert res.expedites == []
    assert res.changed == [("a", "tumbling", BASE)] + [
        ("a", "hopping", s) for s in window_starts(HOPPING, BASE + 30)
    ]
    assert pw.stream_time == BASE + 30
    assert len(pw) == 6
    assert pw.get(("a", "tumbling", BASE)) == WindowAgg(1, 2, Decimal("2.50"))
    assert pw.get(("b", "tumbling", BASE)) is None
    assert ("a", "tumbling", BASE) in pw


def test_stream_time_is_the_largest_ts(make: MakeWindows) -> None:
    pw = make()
    assert pw.stream_time is None
    feed(pw, [order("a", 30), order("a", 5), order("b", 40), order("a", 39)])
    assert pw.stream_time == BASE + 40


def test_advance_moves_stream_time_only_forward(make: MakeWindows) -> None:
    pw = make()
    pw.apply_order("a", BASE + 10, 1, Decimal(1))
    pw.advance(BASE + 5)
    assert pw.stream_time == BASE + 10
    pw.advance(BASE + 70)
    assert pw.stream_time == BASE + 70
    assert {c.kind for c in pw.close_due()} == {"tumbling", "hopping"}
    with pytest.raises(ValueError):
        pw.advance(math.nan)


@pytest.mark.parametrize("ts", [math.nan, math.inf])
def test_non_finite_ts_changes_nothing(make: MakeWindows, ts: float) -> None:
    pw = make()
    with pytest.raises((ValueError, OverflowError)):
        pw.apply_order("a", ts, 1, Decimal(1))
    assert pw.stream_time is None
    assert len(pw) == 0


def test_out_of_order_within_grace_counts(make: MakeWindows) -> None:
    pw = make()
    run = feed(pw, [order("a", 10), order("a", 69), order("a", 59)])
    assert run.late == [0, 0, 0]
    assert run.closed == []
    assert pw.get(("a", "tumbling", BASE)) == WindowAgg(2, 2, Decimal("2.00"))


def test_window_closes_exactly_at_end_plus_grace(make: MakeWindows) -> None:
    pw = make()
    feed(pw, [order("a", 10), order("b", 69)])
    assert pw.close_due() == []  # one second before end + grace: still open
    pw.apply_order("b", BASE + 70, 1, Decimal(1))
    assert [(c.sku, c.kind, c.window_start, c.window_end) for c in pw.close_due()] == [
        ("a", "hopping", BASE - 240, BASE + 60),
        ("a", "tumbling", BASE, BASE + 60),
    ]


def test_order_on_time_by_one_second_counts(make: MakeWindows) -> None:
    pw = make()
    feed(pw, [order("a", 10), order("b", 69)])  # stream time = end + grace - 1
    res = pw.apply_order("a", BASE + 20, 1, Decimal(1))
    assert res.late == 0
    assert pw.get(("a", "tumbling", BASE)) == WindowAgg(2, 2, Decimal(2))


def test_order_late_by_one_second_is_late_but_counts_in_open_hopping_windows(
    make: MakeWindows,
) -> None:
    pw = make()
    run = feed(pw, [order("a", 10, price="2"), order("b", 70)])  # closes [BASE, BASE+60)
    emitted = closed_map(run.closed)
    assert emitted[("a", "tumbling", BASE)] == WindowAgg(1, 1, Decimal(2))
    assert emitted[("a", "hopping", BASE - 240)] == WindowAgg(1, 1, Decimal(2))

    res = pw.apply_order("a", BASE + 20, 5, Decimal(1))
    assert res.late == 2  # the tumbling window and the hopping one ending at BASE + 60
    assert res.is_late
    open_hopping = [BASE - 180, BASE - 120, BASE - 60, BASE]
    assert res.changed == [("a", "hopping", s) for s in open_hopping]
    for s in open_hopping:
        assert pw.get(("a", "hopping", s)) == WindowAgg(2, 6, Decimal(7))
    # The closed windows are gone and never come back.
    assert pw.get(("a", "tumbling", BASE)) is None
    assert pw.close_due() == []


def test_apply_order_never_adds_to_a_window_due_but_not_yet_closed(make: MakeWindows) -> None:
    pw = make()
    pw.apply_order("a", BASE + 10, 1, Decimal(1))
    pw.apply_order("b", BASE + 70, 1, Decimal(1))  # [BASE, BASE+60) is now due
    res = pw.apply_order("a", BASE + 20, 1, Decimal(1))  # close_due not called yet
    assert res.late == 2
    closed = closed_map(pw.close_due())
    assert closed[("a", "tumbling", BASE)] == WindowAgg(1, 1, Decimal(1))


def test_each_window_closes_exactly_once(make: MakeWindows) -> None:
    pw = make()
    orders = [order(sku, off) for off in range(0, 1200, 7) for sku in ("a", "b")]
    run = feed(pw, orders)
    run.closed.extend(pw.close_due())
    keys = [c.key for c in run.closed]
    assert len(keys) == len(set(keys))
    pw.apply_order("z", BASE + 10_000, 1, Decimal(1))
    rest = pw.close_due()
    assert {c.key for c in rest}.isdisjoint(keys)
    assert all(c.sku != "z" for c in rest)
    assert len(pw) == 6  # only z's windows are left


def test_close_due_is_sorted_by_end_kind_sku_start(make: MakeWindows) -> None:
    pw = make()
    feed(pw, [order("b", 10), order("a", 10), order("a", 70)], close_after=lambda _i: False)
    pw.apply_order("c", BASE + 1000, 1, Decimal(1))
    closed = pw.close_due()
    order_keys = [(c.window_end, c.kind, c.sku, c.window_start) for c in closed]
    assert order_keys == sorted(order_keys)
    assert closed[:4] == [
        ClosedWindow("a", "hopping", BASE - 240, BASE + 60, WindowAgg(1, 1, Decimal(1))),
        ClosedWindow("b", "hopping", BASE - 240, BASE + 60, WindowAgg(1, 1, Decimal(1))),
        ClosedWindow("a", "tumbling", BASE, BASE + 60, WindowAgg(1, 1, Decimal(1))),
        ClosedWindow("b", "tumbling", BASE, BASE + 60, WindowAgg(1, 1, Decimal(1))),
    ]


def test_expedite_once_at_threshold_plus_one(make: MakeWindows) -> None:
    pw = make(threshold=2)
    run = feed(pw, [order("a", 30), order("a", 31)])
    assert run.expedites == []
    res = pw.apply_order("a", BASE + 32, 1, Decimal(1))
    assert res.expedites == [
        Expedite("a", s, s + 300, 3) for s in window_starts(HOPPING, BASE + 32)
    ]
    assert res.expedites[0].key == ("a", "hopping", BASE - 240)
    more = feed(pw, [order("a", 33), order("a", 34), order("b", 35)])
    assert more.expedites == []


def test_expedite_for_a_later_window_of_the_same_sku(make: MakeWindows) -> None:
    pw = make(threshold=2)
    run = feed(pw, [order("a", 30), order("a", 31), order("a", 32), order("a", 90)])
    assert len(run.expedites) == 5
    res = pw.apply_order("a", BASE + 91, 1, Decimal(1))
    assert res.expedites == []  # [BASE+60, BASE+360) holds 2 orders (90 and 91)
    res = pw.apply_order("a", BASE + 92, 1, Decimal(1))
    assert res.expedites == [Expedite("a", BASE + 60, BASE + 360, 3)]


def test_never_expedite_at_threshold(make: MakeWindows) -> None:
    pw = make(threshold=2)
    run = feed(pw, [order("a", 30), order("a", 31), order("b", 32), order("b", 2000)])
    run.closed.extend(pw.close_due())
    assert run.expedites == []
    assert max(c.agg.orders for c in run.closed) == 2


def test_tumbling_windows_never_expedite(make: MakeWindows) -> None:
    pw = PartitionWindows([TUMBLING], GRACE, 0)
    assert feed(pw, [order("a", 1), order("a", 2)]).expedites == []


def test_closed_windows_and_expedite_marks_are_forgotten(make: MakeWindows) -> None:
    pw = make(threshold=0)
    run = feed(pw, [order(f"s{i}", i) for i in range(50)])
    assert len(run.expedites) == 50 * 5
    assert len(pw.expedited) == 50 * 5
    pw.apply_order("z", BASE + 100_000, 1, Decimal(1))
    pw.close_due()
    assert len(pw) == 6
    assert pw.expedited == {("z", "hopping", s) for s in window_starts(HOPPING, BASE + 100_000)}


def test_windows_for_lists_open_windows_of_one_sku_and_kind(make: MakeWindows) -> None:
    pw = make()
    feed(pw, [order("a", 10), order("b", 20), order("a", 70, price="3"), order("a", 125)])
    assert pw.windows_for("a", "tumbling") == [
        (BASE + 60, BASE + 120, WindowAgg(1, 1, Decimal(3))),
        (BASE + 120, BASE + 180, WindowAgg(1, 1, Decimal(1))),
    ]
    hop = pw.windows_for("a", "hopping")
    assert [w[0] for w in hop] == list(range(BASE - 180, BASE + 121, 60))
    assert hop[0] == (BASE - 180, BASE + 120, WindowAgg(2, 2, Decimal(4)))
    assert pw.windows_for("zzz", "hopping") == []
    assert PartitionWindows([TUMBLING], GRACE, 2).windows_for("a", "hopping") == []


def test_windows_for_scans_when_the_range_is_larger_than_the_table(
    make: MakeWindows,
) -> None:
    pw = make()
    feed(pw, [order("a", 10)], close_after=lambda _i: False)
    feed(pw, [order("b", 100_000)], close_after=lambda _i: False)  # a's windows are due
    assert [w[0] for w in pw.windows_for("a", "tumbling")] == [BASE]
    assert len(pw.windows_for("b", "hopping")) == 5


# ---------------------------------------------------------------- restore


def snapshot(
    pw: PartitionWindows,
) -> tuple[list[tuple[WindowKey, WindowAgg]], float | None, list[WindowKey]]:
    """What the agent's tables hold, through the JSON round trip."""
    aggs = [
        (parse_window_key(window_key_str(k)), agg_from_json(agg_to_json(a))) for k, a in pw.items()
    ]
    return aggs, pw.stream_time, sorted(pw.expedited)


def mixed_orders() -> list[Order]:
    out = []
    for i in range(400):
        offset = i * 3 - (i % 7) * 9  # drifting forward, out of order, some late
        out.append(order(f"s{i % 5}", offset + (i % 4) * 0.25, 1 + i % 3, f"{i % 11}.{i % 97}"))
    return out


def test_restore_then_continue_equals_uninterrupted_run(make: MakeWindows) -> None:
    orders = mixed_orders()
    whole = feed(make(), orders)

    first = make()
    part1 = feed(first, orders[:150])
    second = make()
    second.restore(*snapshot(first))
    part2 = feed(second, orders[150:])

    assert part1.closed + part2.closed == whole.closed
    assert part1.late + part2.late == whole.late
    assert part1.expedites + part2.expedites == whole.expedites
    assert sum(whole.late) > 0
    assert whole.expedites


def test_restore_with_due_windows_closes_them_next(make: MakeWindows) -> None:
    pw = make()
    pw.restore([(("a", "tumbling", BASE), WindowAgg(1, 2, Decimal(3)))], BASE + 70, [])
    assert pw.close_due() == [
        ClosedWindow("a", "tumbling", BASE, BASE + 60, WindowAgg(1, 2, Decimal(3)))
    ]
    assert len(pw) == 0


def test_restore_drops_expedite_marks_of_closed_windows(make: MakeWindows) -> None:
    pw = make()
    old: WindowKey = ("a", "hopping", BASE - 240)
    live: WindowKey = ("a", "hopping", BASE)
    pw.restore([(live, WindowAgg(3, 3, Decimal(3)))], BASE + 70, [old, live])
    assert set(pw.expedited) == {live}
    assert pw.apply_order("a", BASE + 80, 1, Decimal(1)).expedites == []


def test_restore_forgets_an_expedite_mark_without_aggregate_in_time(make: MakeWindows) -> None:
    pw = make()
    pw.restore([], BASE + 70, [("a", "hopping", BASE)])
    assert set(pw.expedited) == {("a", "hopping", BASE)}
    pw.apply_order("b", BASE + 310, 1, Decimal(1))
    pw.close_due()
    assert set(pw.expedited) == set()


def test_restore_rejects_a_kind_without_spec() -> None:
    pw = PartitionWindows([TUMBLING], GRACE, 2)
    pw.apply_order("a", BASE, 1, Decimal(1))
    with pytest.raises(ValueError, match="no window spec"):
        pw.restore([(("a", "hopping", BASE), EMPTY)], BASE, [])
    assert len(pw) == 1  # unchanged


def test_restore_of_unaligned_windows_still_lists_them(make: MakeWindows) -> None:
    pw = make()
    pw.restore([(("a", "tumbling", BASE + 30), WindowAgg(1, 1, Decimal(1)))], BASE + 40, [])
    assert pw.windows_for("a", "tumbling") == [(BASE + 30, BASE + 90, WindowAgg(1, 1, Decimal(1)))]


# ------------------------------------------------- per-event vs per-batch close


@pytest.mark.parametrize("batch", [2, 7, 50, 1000])
def test_close_per_event_equals_close_per_batch(make: MakeWindows, batch: int) -> None:
    orders = mixed_orders()
    per_event = feed(make(), orders)
    pw = make()
    per_batch = feed(pw, orders, close_after=lambda i: (i + 1) % batch == 0)
    per_batch.closed.extend(pw.close_due())
    assert per_batch.closed == per_event.closed
    assert per_batch.late == per_event.late
    assert per_batch.expedites == per_event.expedites
    assert per_batch.changed == per_event.changed


# ------------------------------------------------------------------- properties


class Oracle:
    """Brute-force recomputation from the list of orders, independent of the module."""

    def __init__(
        self, specs: Sequence[WindowSpec], grace_s: int, threshold: int, orders: Sequence[Order]
    ) -> None:
        self.late: list[int] = []
        self.late_tumbling: list[bool] = []
        self.expedites: list[tuple[str, int, int]] = []
        windows: dict[WindowKey, list[int | Decimal]] = {}
        stream_time: float | None = None
        for sku, ts, qty, price in orders:
            late = 0
            late_tumbling = False
            for spec in specs:
                size, step = spec.size_s, spec.step_s
                k0 = int(ts) // step
                for k in range(k0 - size // step - 2, k0 + 3):
                    start = k * step
                    if not start <= ts < start + size:
                        continue
                    if stream_time is not None and stream_time >= start + size + grace_s:
                        late += 1
                        late_tumbling |= spec.kind == "tumbling"
                        continue
                    w = windows.setdefault((sku, spec.kind, start), [0, 0, Decimal(0)])
                    w[0] += 1
                    w[1] += qty
                    w[2] += qty * price
                    if spec.kind == "hopping" and w[0] == threshold + 1:
                        self.expedites.append((sku, start, threshold + 1))
            self.late.append(late)
            self.late_tumbling.append(late_tumbling)
            stream_time = ts if stream_time is None else max(stream_time, ts)
        sizes = {s.kind: s.size_s for s in specs}
        self.closed: dict[WindowKey, WindowAgg] = {}
        self.open: dict[WindowKey, WindowAgg] = {}
        for key, (n, units, revenue) in windows.items():
            agg = WindowAgg(int(n), int(units), Decimal(revenue))
            closed = stream_time is not None and stream_time >= key[2] + sizes[key[1]] + grace_s
            (self.closed if closed else self.open)[key] = agg


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[WindowSpec], int, int, list[Order], list[bool]]:
    step = draw(st.integers(1, 10))
    specs = [tumbling(draw(st.integers(1, 30))), hopping(step * draw(st.integers(1, 4)), step)]
    grace = draw(st.integers(0, 15))
    threshold = draw(st.integers(0, 4))
    n = draw(st.integers(0, 60))
    offset = 0
    orders: list[Order] = []
    for _ in range(n):
        offset = max(0, offset + draw(st.integers(-30, 10)))
        ts = BASE + offset + draw(st.sampled_from([0.0, 0.25, 0.5, 0.999]))
        orders.append(
            (
                draw(st.sampled_from(["a", "b", "c|d"])),
                ts,
                draw(st.integers(1, 5)),
                draw(st.decimals(min_value=0, max_value=100, places=3)),
            )
        )
    close_after = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return specs, grace, threshold, orders, close_after


PROPERTY = settings(max_examples=200, deadline=None, database=None)


def run_scenario(
    specs: list[WindowSpec],
    grace: int,
    threshold: int,
    orders: list[Order],
    close_after: list[bool],
) -> tuple[PartitionWindows, Run]:
    pw = PartitionWindows(specs, grace, threshold)
    run = feed(pw, orders, close_after=lambda i: close_after[i])
    run.closed.extend(pw.close_due())
    return pw, run


@PROPERTY
@given(scenarios())
def test_property_matches_brute_force_oracle(
    scenario: tuple[list[WindowSpec], int, int, list[Order], list[bool]],
) -> None:
    specs, grace, threshold, orders, _ = scenario
    pw, run = run_scenario(*scenario)
    oracle = Oracle(specs, grace, threshold, orders)
    assert closed_map(run.closed) == oracle.closed
    assert dict(pw.items()) == oracle.open
    assert run.late == oracle.late
    assert [(e.sku, e.window_start, e.orders) for e in run.expedites] == oracle.expedites
    size = specs[1].size_s
    assert all(e.window_end == e.window_start + size for e in run.expedites)


@PROPERTY
@given(scenarios())
def test_property_every_window_closes_at_most_once_in_order(
    scenario: tuple[list[WindowSpec], int, int, list[Order], list[bool]],
) -> None:
    pw, run = run_scenario(*scenario)
    keys = [c.key for c in run.closed]
    assert len(keys) == len(set(keys))
    assert set(keys).isdisjoint(k for k, _ in pw.items())
    sort_keys = [(c.window_end, c.kind, c.sku, c.window_start) for c in run.closed]
    assert sort_keys == sorted(sort_keys)
    assert pw.close_due() == []


@PROPERTY
@given(scenarios())
def test_property_tumbling_orders_sum_to_non_late_orders(
    scenario: tuple[list[WindowSpec], int, int, list[Order], list[bool]],
) -> None:
    specs, grace, _, orders, _ = scenario
    pw, run = run_scenario(*scenario)
    tumbling_spec = specs[0]
    stream_time: float | None = None
    on_time: dict[str, int] = {}
    for sku, ts, _qty, _price in orders:
        _open, late = assign(tumbling_spec, ts, stream_time, grace)
        if not late:
            on_time[sku] = on_time.get(sku, 0) + 1
        stream_time = ts if stream_time is None else max(stream_time, ts)
    counted: dict[str, int] = {}
    windows = [(c.sku, c.kind, c.agg) for c in run.closed]
    windows += [(k[0], k[1], a) for k, a in pw.items()]
    for sku, kind, agg in windows:
        if kind == "tumbling":
            counted[sku] = counted.get(sku, 0) + agg.orders
    assert counted == on_time


@PROPERTY
@given(scenarios(), st.integers(0, 60), st.sampled_from(["all", "lazy", "lazy, loose bound"]))
def test_property_restore_anywhere_equals_uninterrupted(
    scenario: tuple[list[WindowSpec], int, int, list[Order], list[bool]], cut: int, how: str
) -> None:
    """Restored with every window (restore) or from a store read on demand (restore_from,
    with the agent's lower bound of open starts or a looser one), then fed the rest:
    the same closed windows in the same order, late counts and expedites."""
    specs, grace, threshold, orders, close_after = scenario
    cut = min(cut, len(orders))
    whole_pw, whole = run_scenario(*scenario)
    first = PartitionWindows(specs, grace, threshold)
    part1 = feed(first, orders[:cut], close_after=lambda i: close_after[i])
    if how == "all":
        second = PartitionWindows(specs, grace, threshold)
        second.restore(*snapshot(first))
    else:
        second = lazily_restored(first, BASE - 10_000 if how == "lazy, loose bound" else None)
    assert second.next_close_at == first.next_close_at
    part2 = feed(second, orders[cut:], close_after=lambda i: close_after[cut + i])
    part2.closed.extend(second.close_due())
    assert part1.closed + part2.closed == whole.closed
    assert part1.late + part2.late == whole.late
    assert part1.expedites + part2.expedites == whole.expedites
    second.load_all()
    assert dict(second.items()) == dict(whole_pw.items())
    assert set(second.expedited) == set(whole_pw.expedited)


# -------------------------------------------------------------------- idle close


def test_idle_stream_time_is_off_until_idle_long_enough() -> None:
    assert idle_stream_time(BASE, 10.0, 0) is None  # off
    assert idle_stream_time(None, 10.0, 3) is None  # no order yet: nothing to close
    assert idle_stream_time(BASE, 2.999, 3) is None  # not idle long enough
    assert idle_stream_time(BASE, 3.0, 3) == BASE + 3.0
    assert idle_stream_time(BASE, 42.5, 3) == BASE + 42.5  # the whole idle period counts


def test_advance_to_closes_and_returns_what_is_due_once(make: MakeWindows) -> None:
    pw = make(grace_s=0)
    feed(pw, [order("a", 10), order("b", 59)], close_after=lambda _i: False)
    assert pw.next_close_at == BASE + 60
    assert pw.advance_to(BASE + 59.5) == []
    closed = pw.advance_to(BASE + 60)
    assert [(c.sku, c.kind, c.window_start) for c in closed] == [
        ("a", "hopping", BASE - 240),
        ("b", "hopping", BASE - 240),
        ("a", "tumbling", BASE),
        ("b", "tumbling", BASE),
    ]
    assert pw.stream_time == BASE + 60
    assert pw.advance_to(BASE + 60) == []  # each window once
    assert pw.advance_to(BASE + 10) == []  # stream time never moves back
    assert pw.stream_time == BASE + 60


def test_an_order_for_a_window_closed_by_idleness_is_late(make: MakeWindows) -> None:
    pw = make(grace_s=0)
    pw.apply_order("a", BASE + 10, 1, Decimal(1))
    pw.advance_to(BASE + 60)
    res = pw.apply_order("a", BASE + 20, 1, Decimal(1))
    # Closed by idleness: its tumbling window and the hopping window ending at BASE + 60.
    assert res.late == 2
    assert ("a", "tumbling", BASE) not in pw
    assert pw.get(("a", "hopping", BASE)) == WindowAgg(2, 2, Decimal(2))


def test_idle_close_survives_restore(make: MakeWindows) -> None:
    first = make(grace_s=0)
    first.apply_order("a", BASE + 10, 1, Decimal(1))
    emitted = first.advance_to(BASE + 60)
    assert emitted
    second = make(grace_s=0)
    second.restore(*snapshot(first))
    assert second.close_due() == []  # never emitted again
    assert second.apply_order("a", BASE + 30, 1, Decimal(1)).late == 2


# ------------------------------------------------------------------ lazy restore


class DictStore:
    """A WindowStore over a snapshot, as the table held it at the restore; it stays as
    it was (the real one lags behind), and counts what was read."""

    def __init__(self, pw: PartitionWindows) -> None:
        aggs, _, expedited = snapshot(pw)
        marked = set(expedited)
        self.windows = {key: (agg, key in marked) for key, agg in aggs}
        self.read: list[WindowKey] = []

    def _out(self, keys: Iterable[WindowKey]) -> list[StoredWindow]:
        found = [StoredWindow(k, *self.windows[k]) for k in keys]
        self.read.extend(s.key for s in found)
        return found

    def of_sku(self, sku: str, starts_from: Mapping[str, int]) -> list[StoredWindow]:
        # Older ones too, as the protocol allows: PartitionWindows must skip them.
        return self._out(k for k in self.windows if k[0] == sku and k[1] in starts_from)

    def starting(self, kind: str, lo: int, hi: int) -> list[StoredWindow]:
        return self._out(k for k in self.windows if k[1] == kind and lo <= k[2] < hi)

    def first_start(self, kind: str, lo: int) -> int | None:
        return min((k[2] for k in self.windows if k[1] == kind and k[2] >= lo), default=None)


def lazily_restored(first: PartitionWindows, open_from: int | None = None) -> PartitionWindows:
    """A PartitionWindows restored from ``first``'s windows as the agent does after a
    restart: ``open_from`` as its commit records it, unless given (a looser bound)."""
    second = PartitionWindows(first.specs, first.grace_s, first.expedite_threshold)
    if open_from is None:
        close_at = first.next_close_at
        longest_s = max(s.size_s for s in first.specs)
        open_from = 0 if close_at is None else close_at - longest_s - first.grace_s
    second.restore_from(DictStore(first), first.stream_time, open_from)
    return second


def test_lazy_restore_reads_nothing_until_an_order_then_only_its_skus(make: MakeWindows) -> None:
    first = make()
    feed(first, [order(f"s{i}", i) for i in range(50)])
    second = lazily_restored(first)
    store = second._store
    assert isinstance(store, DictStore)
    assert store.read == []
    second.apply_order("s7", BASE + 50, 1, Decimal(1))
    assert store.read and {k[0] for k in store.read} == {"s7"}
    assert second.get(("s7", "tumbling", BASE)) == WindowAgg(2, 2, Decimal(2))


def test_lazy_restore_takes_in_due_windows_of_other_skus_in_order(make: MakeWindows) -> None:
    first = make()
    feed(first, [order("a", 5), order("b", 6), order("c", 7)])
    second = lazily_restored(first)
    second.apply_order("b", BASE + 70, 1, Decimal(1))  # closes the windows ending at 60
    closed = second.close_due()
    assert [(c.sku, c.kind, c.window_start, c.agg.orders) for c in closed] == [
        ("a", "hopping", BASE - 240, 1),
        ("b", "hopping", BASE - 240, 1),
        ("c", "hopping", BASE - 240, 1),
        ("a", "tumbling", BASE, 1),
        ("b", "tumbling", BASE, 1),
        ("c", "tumbling", BASE, 1),
    ]
    assert second.close_due() == []
    # "a" is read at its next order: the windows emitted above are not taken in again.
    assert second.apply_order("a", BASE + 6, 1, Decimal(1)).late == 2
    assert ("a", "tumbling", BASE) not in second
    assert second.get(("a", "hopping", BASE)) == WindowAgg(2, 2, Decimal(2))


def test_lazy_restore_next_close_at_counts_windows_still_in_the_store(make: MakeWindows) -> None:
    first = make()
    feed(first, [order("a", 5)])
    second = lazily_restored(first)
    assert second.next_close_at == first.next_close_at == BASE + 70
    second.advance_to(BASE + 70)
    assert second.next_close_at == BASE + 130  # the next hopping window of "a"


def test_lazy_restore_ends_once_stream_time_passes_every_stored_window(make: MakeWindows) -> None:
    first = make()
    feed(first, [order("a", 5)])
    second = lazily_restored(first)
    assert second._store is not None
    closed = second.advance_to(BASE + 400)
    assert len(closed) == 6
    assert second._store is None and not second._loaded


def test_load_all_reads_every_stored_window(make: MakeWindows) -> None:
    first = make()
    feed(first, [order(f"s{i}", i * 7) for i in range(30)], close_after=lambda i: i % 3 == 0)
    second = lazily_restored(first)
    second.apply_order("s3", BASE + 210, 1, Decimal(1))
    second.load_all()
    third = make()
    third.restore(*snapshot(first))
    third.apply_order("s3", BASE + 210, 1, Decimal(1))
    assert dict(second.items()) == dict(third.items())
    assert second.expedited == third.expedited
