"""Scenario generators, pacing and JSONL of app.scenarios: pure, no Kafka."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from app.domain.events import InvalidEvent, parse_order, parse_stock, parse_ts
from app.domain.models import INITIAL, Order, SkuState
from app.domain.rules import windows as w
from app.domain.rules.stock import apply_order, apply_stock
from app.tools import scenarios as sc

START = sc.parse_start(sc.DEFAULT_START)


def take(name: str, seed: int = 1, n: int = 1500, **kw: object) -> list[sc.Labeled]:
    return list(sc.limit_labeled(sc.generate_labeled(name, seed, **kw), count=n))  # type: ignore[arg-type]


def wire(events: list[sc.Event]) -> list[tuple[str, str | None, bytes | None, float]]:
    """What Kafka would see: topic, key, value bytes; plus the ts."""
    return [(e.topic, e.key, sc.encode_value(e.value), e.ts) for e in events]


def parse(event: sc.Event) -> object:
    raw = sc.encode_value(event.value)
    return parse_order(raw) if event.topic == "orders" else parse_stock(raw)


def replay(events: list[sc.Event]) -> dict[str, SkuState]:
    """Apply the valid, non-duplicate events with the app's rules (default settings)."""
    states: dict[str, SkuState] = {}
    seen: set[tuple[str, str]] = set()
    for event in events:
        item = sc.parse_event(event)
        if item is None:
            continue
        ident = item.order_id if isinstance(item, Order) else item.event_id
        if (event.topic, ident) in seen:
            continue
        seen.add((event.topic, ident))
        state = states.get(item.sku, INITIAL)
        if isinstance(item, Order):
            states[item.sku] = apply_order(state, item, reorder_point=20, reorder_target=100)[0]
        else:
            states[item.sku] = apply_stock(state, item, reorder_point=20, reorder_target=100)[0]
    return states


# --- determinism --------------------------------------------------------------------


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_same_seed_gives_the_same_stream_byte_for_byte(name: str) -> None:
    first = [item.event for item in take(name, seed=7)]
    second = [item.event for item in take(name, seed=7)]
    assert wire(first) == wire(second)


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_another_seed_gives_another_stream(name: str) -> None:
    assert wire([i.event for i in take(name, 1, 300)]) != wire(
        [i.event for i in take(name, 2, 300)]
    )


def test_unknown_scenario_is_refused() -> None:
    with pytest.raises(sc.ScenarioError, match="unknown scenario 'nope'"):
        sc.generate("nope")


# --- validity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_valid_events_parse_and_malformed_ones_do_not(name: str) -> None:
    for item in take(name, n=3000):
        event = item.event
        assert event.topic in sc.INPUT_TOPICS
        assert event.key is not None or event.value is not None  # Kafka needs one of them
        if item.label.startswith("malformed:"):
            with pytest.raises(InvalidEvent):
                parse(event)
        else:
            parsed = parse(event)
            assert event.key == parsed.sku  # type: ignore[attr-defined]
            assert event.ts == parsed.ts  # type: ignore[attr-defined]


def test_every_malformed_kind_breaks_the_contract() -> None:
    assert len(sc.MALFORMED_KINDS) >= 10
    for kind in sc.MALFORMED_KINDS:
        topic, value = sc.malformed_message(kind, "SKU-0001", 1_795_683_600_000)
        raw = sc.encode_value(value)
        with pytest.raises(InvalidEvent):
            parse_order(raw) if topic == "orders" else parse_stock(raw)


def test_malformed_scenario_covers_every_kind_duplicates_and_late_orders() -> None:
    items = take("malformed", n=500)
    labels = Counter(item.label for item in items)
    kinds = {label.split(":", 1)[1] for label in labels if label.startswith("malformed:")}
    assert kinds == set(sc.MALFORMED_KINDS)
    assert labels["duplicate"] >= 10
    assert labels["late-order"] >= 3
    earlier: set[tuple[str, bytes | None]] = set()
    for item in items:
        event = item.event
        raw = sc.encode_value(event.value)
        if item.label == "duplicate":
            # An exact re-send: same topic, key and value bytes as an earlier message.
            assert (event.topic, raw) in earlier
        earlier.add((event.topic, raw))


def test_ts_uses_every_format_of_the_contract() -> None:
    styles = Counter()
    for item in take("steady", n=2000):
        ts = item.event.value["ts"]  # type: ignore[index]
        if isinstance(ts, str):
            styles["Z" if ts.endswith("Z") else "offset"] += 1
        else:
            styles["number"] += 1
        assert parse_ts(ts) == item.event.ts
    assert set(styles) == {"Z", "offset", "number"}


# --- what the scenarios are about ------------------------------------------------------


def test_steady_starts_with_one_delivery_per_sku_and_mostly_allocates() -> None:
    events = [i.event for i in take("steady", n=20_000)]
    first = events[:200]
    assert all(e.topic == "stock" and e.value["reason"] == "delivery" for e in first)  # type: ignore[index]
    assert len({e.key for e in first}) == 200
    orders = [e for e in events if e.topic == "orders"]
    assert len(orders) / len(events) > 0.9
    span = events[-1].ts - events[0].ts
    # ~5 orders/s of event time per 100 SKUs, with 200 SKUs: ~10/s.
    assert 9.0 < len(orders) / span < 11.0
    backordered = 0
    states: dict[str, SkuState] = {}
    for event in events:
        item = sc.parse_event(event)
        assert item is not None
        state = states.get(item.sku, INITIAL)
        if isinstance(item, Order):
            state, status, _ = apply_order(state, item, reorder_point=20, reorder_target=100)
            backordered += status.status == "backordered"
        else:
            state, _ = apply_stock(state, item, reorder_point=20, reorder_target=100)
        states[item.sku] = state
    assert backordered < 0.02 * len(orders)
    reasons = Counter(e.value["reason"] for e in events if e.topic == "stock")  # type: ignore[index]
    assert set(reasons) == {"delivery", "return", "adjustment"}


def test_flash_sale_drives_skus_into_backlog_and_over_the_expedite_threshold() -> None:
    events = [i.event for i in take("flash-sale", n=3000)]
    lowest: dict[str, int] = {}
    states: dict[str, SkuState] = {}
    pw = w.PartitionWindows([w.hopping(300, 60)], grace_s=10, expedite_threshold=2)
    busiest = 0
    for event in events:
        item = sc.parse_event(event)
        assert item is not None
        state = states.get(item.sku, INITIAL)
        if isinstance(item, Order):
            state = apply_order(state, item, reorder_point=20, reorder_target=100)[0]
            pw.apply_order(item.sku, item.ts, item.quantity, item.unit_price)
            busiest = max(busiest, max((agg.orders for _, agg in pw.items()), default=0))
        else:
            state = apply_stock(state, item, reorder_point=20, reorder_target=100)[0]
        states[item.sku] = state
        lowest[item.sku] = min(lowest.get(item.sku, 0), state.level)
    backlogged = [sku for sku, level in lowest.items() if level < -20]
    assert len(backlogged) >= 3
    assert busiest > 20  # far more than EXPEDITE_THRESHOLD orders in one hopping window


def test_restock_supplier_orders_go_partially_fulfilled_then_completed() -> None:
    events = [i.event for i in take("restock", n=2000)]
    history: dict[str, list[str]] = defaultdict(list)
    states: dict[str, SkuState] = {}
    for event in events:
        item = sc.parse_event(event)
        assert item is not None
        state = states.get(item.sku, INITIAL)
        if isinstance(item, Order):
            state, _, changes = apply_order(state, item, reorder_point=20, reorder_target=100)
        else:
            state, changes = apply_stock(state, item, reorder_point=20, reorder_target=100)
        states[item.sku] = state
        for so in changes:
            history[so.supplier_order_id].append(so.status)
    lifecycles = Counter(tuple(statuses) for statuses in history.values())
    assert lifecycles[("open", "partially_fulfilled", "completed")] >= 20
    # No SKU is refilled otherwise: every delivery after the first is a supplier's.
    assert {s for h in history.values() for s in h} == {"open", "partially_fulfilled", "completed"}


def test_demo_tells_the_whole_story_in_2000_events() -> None:
    items = take("demo", n=2000)
    labels = Counter(i.label.split(":")[0] for i in items)
    assert labels["malformed"] >= 10 and labels["duplicate"] >= 5 and labels["late-order"] >= 3
    states = replay([i.event for i in items])
    assert len(states) == 40
    # The flash-sale SKUs needed two supplier orders each: the first one could not cover
    # the backlog, so completing it opened the next.
    assert sum(s.supplier_orders_opened >= 2 for s in states.values()) >= 3


# --- limits and time --------------------------------------------------------------------


def test_count_is_respected() -> None:
    assert len(list(sc.limit(sc.generate("steady"), count=123))) == 123
    assert len(list(sc.limit(sc.generate("malformed"), count=1))) == 1


@pytest.mark.parametrize("name", sc.SCENARIOS)
def test_duration_is_event_time_from_the_start(name: str) -> None:
    events = list(sc.limit(sc.generate(name), duration=600))
    assert events[0].ts == START
    clock = max(e.ts for e in events)
    assert START + 590 < clock < START + 600
    # The next event of the stream is at or after the end.
    following = list(sc.limit(sc.generate(name), count=len(events) + 1))[-1]
    assert max(clock, following.ts) >= START + 600


def test_start_moves_the_whole_stream() -> None:
    a = [e.ts for e in sc.limit(sc.generate("demo"), count=500)]
    b = [e.ts for e in sc.limit(sc.generate("demo", start=START + 3600), count=500)]
    assert [round(y - x, 3) for x, y in zip(a, b, strict=True)] == [3600.0] * 500


def test_scenario_time_only_goes_back_for_late_orders_and_duplicates() -> None:
    clock = 0.0
    for item in take("demo", n=3000):
        if item.label not in ("late-order", "duplicate") and not item.label.startswith("mal"):
            assert item.event.ts >= clock
            clock = item.event.ts


def test_sim_time_advances_by_the_speedup() -> None:
    pacing = sc.Pacing(speedup=3600)
    assert pacing.due(0, 0.0) == 0.0
    assert pacing.due(10_000, 3600.0) == pytest.approx(1.0)  # an hour of trade per second
    assert sc.Pacing(speedup=60).due(5, 90.0) == pytest.approx(1.5)
    # A rate limit and a speedup together: whichever is later.
    both = sc.Pacing(speedup=3600, rate=100)
    assert both.due(500, 3600.0) == pytest.approx(5.0)
    assert both.due(10, 36_000.0) == pytest.approx(10.0)
    assert sc.Pacing().due(1_000_000, 1e9) == 0.0  # as fast as possible


def test_parse_start_accepts_iso_and_epoch_seconds() -> None:
    assert sc.parse_start("2026-11-26T09:00:00Z") == 1795683600.0
    assert sc.parse_start("2026-11-26T10:00:00+01:00") == 1795683600.0
    assert sc.parse_start("1795683600.1234") == 1795683600.123
    for bad in ("yesterday", "2026-11-26", "-5", "nan"):
        with pytest.raises(sc.ScenarioError):
            sc.parse_start(bad)


def test_retime_moves_valid_ts_to_now_in_the_same_format() -> None:
    now = 2_000_000_000.0
    order = {"order_id": "o", "customer_id": "c", "sku": "A", "quantity": 1, "unit_price": 1}
    for ts in ("2026-11-26T09:00:00Z", "2026-11-26T10:00:00+01:00", 1795683600):
        event = sc.Event("orders", "A", {**order, "ts": ts}, 1795683600.0)
        live = sc.retime(event, now, clock=1795683600.0)
        assert live.ts == now
        assert parse_order(sc.encode_value(live.value)).ts == now
        new = live.value["ts"]  # type: ignore[index]
        assert isinstance(new, str) == isinstance(ts, str)
        assert str(new)[-1] == str(ts)[-1]  # 'Z', an offset, or a number
    late = sc.retime(
        sc.Event("orders", "A", {**order, "ts": 1795683000}, 1795683000.0), now, 1795683600.0
    )
    assert late.ts == now - 600  # stays ten minutes late
    bad = sc.Event("orders", "A", {**order, "ts": "yesterday"}, 1795683600.0)
    assert sc.retime(bad, now, 1795683600.0) is bad
    raw = sc.Event("orders", None, b"{not json", 1795683600.0)
    assert sc.retime(raw, now, 1795683600.0) is raw


# --- the determinism rule -----------------------------------------------------------


def _order(sku: str, oid: str, quantity: int = 1, ts: int = 1795683600) -> sc.Event:
    value = {"order_id": oid, "customer_id": "c", "sku": sku, "quantity": quantity}
    return sc.Event("orders", sku, {**value, "unit_price": 1, "ts": ts}, float(ts))


def _move(sku: str, eid: str, ts: int = 1795683600) -> sc.Event:
    value = {"event_id": eid, "sku": sku, "reason": "delivery", "quantity": 5}
    return sc.Event("stock", sku, {**value, "ts": ts}, float(ts))


def test_pacer_sets_a_barrier_when_a_sku_switches_topic() -> None:
    pacer = sc.Pacer()
    stream = [
        (_move("A", "s1"), False),
        (_move("B", "s2"), False),
        (_order("C", "o1"), False),  # another SKU: no order to keep
        (_order("A", "o2"), True),  # A: stock -> orders
        (_order("B", "o3"), False),  # B's move was before the barrier
        (_move("B", "s2"), False),  # a duplicate changes nothing wherever it lands
        (sc.Event("stock", "A", b"garbage", 0.0), False),  # malformed: no state either
        (_move("A", "s3"), True),  # A: orders -> stock again
        (_move("A", "s4"), False),
    ]
    assert [pacer.needs_barrier(event) for event, _ in stream] == [b for _, b in stream]


def test_an_hour_of_steady_trade_needs_few_barriers() -> None:
    pacer = sc.Pacer()
    events = list(sc.limit(sc.generate("steady"), duration=3600))
    barriers = sum(pacer.needs_barrier(e) for e in events)
    assert len(events) > 35_000
    assert barriers <= 2 * 3600 // sc.RECIPES["steady"].round_s + 1


# --- JSONL --------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_every_message_exactly(tmp_path: Path) -> None:
    events = [i.event for i in take("malformed", n=400)]
    assert any(e.value is None for e in events)  # tombstones
    assert any(isinstance(e.value, bytes) and b"\xff" in e.value for e in events)  # not UTF-8
    path = tmp_path / "s.jsonl"
    with path.open("wb") as out:
        assert sc.write_jsonl(events, out) == 400
    assert wire(sc.read_jsonl(path)) == wire(events)


def test_jsonl_lines_may_omit_key_and_ts(tmp_path: Path) -> None:
    path = tmp_path / "hand.jsonl"
    lines = [
        {"topic": "stock", "value": "not json at all"},
        {"topic": "orders", "value": {**_order("A", "o1").value, "ts": "2026-11-26T09:00:01Z"}},  # type: ignore[dict-item]
        {"topic": "orders", "key": "A", "value": [1, 2]},
        {"topic": "orders", "key": "A", "value": None, "ts": 1795683700},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n")
    events = sc.read_jsonl(path)
    assert [e.ts for e in events] == [1795683601.0, 1795683601.0, 1795683601.0, 1795683700.0]
    assert events[0].value == b"not json at all" and events[0].key is None
    assert events[2].value == b"[1,2]" and events[3].value is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1]", "a line must be a JSON object"),
        (b'{"topic": "dead-letters", "value": {}}', "topic must be one of orders, stock"),
        (b'{"topic": "orders", "key": 5, "value": {}}', "key must be a string or null"),
        (b'{"topic": "orders"}', "give exactly one of value and value_b64"),
        (b'{"topic": "orders", "value_b64": "%%%"}', "value_b64 is not valid base64"),
        (b'{"topic": "orders", "value": {}, "ts": "noon"}', "ts must be a number"),
        (b'{"topic": "orders", "value": null}', "a null value \\(a tombstone\\) needs a key"),
    ],
)
def test_a_bad_jsonl_line_is_named_with_its_number(
    tmp_path: Path, line: bytes, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"topic": "orders", "value": "x"}\n' + line + b"\n")
    with pytest.raises(sc.ScenarioError, match=f"bad.jsonl:2: {message}"):
        sc.read_jsonl(path)


def test_unreadable_jsonl_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(sc.ScenarioError, match=r"cannot read .*missing\.jsonl: No such file"):
        sc.read_jsonl(tmp_path / "missing.jsonl")


def test_write_jsonl_is_one_object_per_line() -> None:
    out = io.BytesIO()
    sc.write_jsonl([_order("A", "o1")], out)
    line = orjson.loads(out.getvalue())
    assert line["topic"] == "orders" and line["key"] == "A"
    assert line["value"]["unit_price"] == 1 and line["ts"] == 1795683600.0
    assert Decimal(str(line["value"]["unit_price"])) == 1


# --- expect: the expected results (app.commands builds the Faust app, no Kafka) ---------


def test_expect_counts_duplicates_dead_letters_backorders_and_supplier_orders() -> None:
    from app.domain.settings import Settings
    from app.tools.expect import compute_expected

    events = [
        _move("A", "s1", ts=1795683599),  # level 5: a supplier order for 95 opens
        _order("A", "o1"),
        _order("A", "o1"),  # a duplicate
        sc.Event("orders", None, b"{", 1795683600.0),  # a dead letter
        _order("A", "o2", quantity=7),  # 4 on hand: 3 backordered
    ]
    exp = compute_expected(events, Settings(), live=False)
    assert (exp.dead_lettered, exp.duplicates) == (1, 1)
    assert (exp.processed_orders, exp.processed_stock_moves) == (2, 1)
    a = exp.skus["A"]
    assert a.state.level == 5 - 1 - 7
    assert (a.backordered_orders, a.backordered_units) == (1, 3)
    supplier_orders = [
        (so.supplier_order_id, so.quantity, so.status) for so in a.supplier_orders.values()
    ]
    assert supplier_orders == [("SO-A-1", 95, "open")]


def test_expect_applies_the_contracts_merge_order_not_the_production_order() -> None:
    """Orders sort before stock moves of the same ts, and a stock move produced after
    an order but older than it is applied first."""
    from app.domain.settings import Settings
    from app.tools.expect import compute_expected

    t0 = 1795683600
    tie = compute_expected(
        [_move("A", "s1", ts=t0), _order("A", "o1", ts=t0)], Settings(), live=False
    )
    assert tie.statuses["o1"]["status"] == "backordered"
    older = compute_expected(
        [_order("A", "o1", ts=t0 + 30), _move("A", "s1", ts=t0)], Settings(), live=False
    )
    assert older.statuses["o1"]["status"] == "allocated"


def test_expect_windows_and_late_orders_follow_the_partition_stream_time() -> None:
    from app.domain.settings import Settings
    from app.tools.expect import compute_expected, held_windows

    t0 = 1795683600  # a minute boundary
    events = [
        _order("A", "o1", ts=t0),
        _order("A", "o2", ts=t0 + 75),
        _order("A", "o3", ts=t0 + 5),
    ]
    exp = compute_expected(events, Settings(), live=False)
    # o2 moved stream time to t0+75 >= t0+60+10: [t0, t0+60) closed before o3 came.
    assert exp.late == 1
    tumbling = [(c.window_start, c.agg.orders) for c in exp.closed if c.kind == "tumbling"]
    assert tumbling == [(t0, 1)]
    rows = held_windows(exp, "A", "tumbling")
    assert [(r[2], r[5]) for r in rows] == [(1, True), (1, False)]  # (orders, closed)


def test_check_jsonl_reports_every_bad_line_with_its_reason(tmp_path: Path) -> None:
    good = {"order_id": "o1", "customer_id": "c", "sku": "A", "quantity": 1}
    lines = [
        orjson.dumps({"topic": "orders", "value": {**good, "unit_price": 1, "ts": 1.8e9}}),
        b"",
        orjson.dumps({"topic": "orders", "value": {**good, "unit_price": -1, "ts": 1.8e9}}),
        b"{not json",
        orjson.dumps({"topic": "stock", "value": "{}"}),
        orjson.dumps({"topic": "elsewhere", "value": {}}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    found = dict(sc.check_jsonl(path))
    assert list(found) == [1, 3, 4, 5, 6]  # the blank line is skipped
    assert found[1] is None
    assert found[3] is not None and found[3].startswith("orders: unit_price")
    assert found[4] is not None and found[4].startswith("not an event line: not valid JSON")
    assert found[5] == "stock: missing field: event_id"
    assert found[6] is not None and found[6].startswith("not an event line: topic")
    with pytest.raises(sc.ScenarioError, match="cannot read"):
        list(sc.check_jsonl(tmp_path / "missing.jsonl"))
