"""Parsing and validation of raw input values (app.events): the contract's input rules."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.events import (
    MAX_QUANTITY,
    MAX_TS,
    MAX_UNIT_PRICE,
    MIN_EVENT_TS,
    InvalidEvent,
    event_ts,
    format_ts,
    parse_order,
    parse_stock,
    parse_ts,
)
from app.domain.models import Order, StockMove

# Shared CI machines make timings noisy, and examples need not be kept in the repo.
PROPERTY = settings(deadline=None, database=None)
NOON = 1795694400.0  # 2026-11-26T12:00:00Z
MISSING: Any = object()  # factory override that drops the field


def order_value(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "sku": "SKU-1",
        "quantity": 2,
        "unit_price": 19.99,
        "ts": "2026-11-26T12:00:00Z",
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not MISSING}


def stock_value(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event_id": "s-1",
        "sku": "SKU-1",
        "reason": "delivery",
        "quantity": 50,
        "supplier_id": "sup-1",
        "ts": "2026-11-26T12:00:00Z",
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not MISSING}


def order_raw(**overrides: Any) -> bytes:
    return orjson.dumps(order_value(**overrides))


def stock_raw(**overrides: Any) -> bytes:
    return orjson.dumps(stock_value(**overrides))


def with_raw_field(raw: bytes, field: str, json_text: str) -> bytes:
    """``raw`` with one field's JSON text replaced verbatim (for text orjson won't write)."""
    value = orjson.loads(raw)
    value[field] = "__placeholder__"
    return orjson.dumps(value).replace(b'"__placeholder__"', json_text.encode())


# --- valid input ------------------------------------------------------------------


def test_order_iso_ts() -> None:
    assert parse_order(order_raw()) == Order("o-1", "c-1", "SKU-1", 2, Decimal("19.99"), NOON)


def test_order_numeric_ts_int_and_float() -> None:
    assert parse_order(order_raw(ts=1795694400)).ts == NOON
    assert parse_order(order_raw(ts=1795694400.25)).ts == NOON + 0.25


def test_order_ts_with_offset_is_converted_to_utc() -> None:
    assert parse_order(order_raw(ts="2026-11-26T13:00:00+01:00")).ts == NOON


def test_unit_price_is_exact_decimal() -> None:
    assert parse_order(order_raw(unit_price=19.99)).unit_price == Decimal("19.99")
    assert parse_order(order_raw(unit_price=0.1)).unit_price == Decimal("0.1")
    assert parse_order(order_raw(unit_price=5)).unit_price == Decimal(5)
    assert parse_order(order_raw(unit_price=0)).unit_price == 0
    assert not parse_order(order_raw(unit_price=-0.0)).unit_price.is_signed()


def test_extra_fields_are_ignored() -> None:
    extra = {"channel": "web", "items": [1, {"x": None}], "quantity_note": True}
    assert parse_order(order_raw(**extra)) == parse_order(order_raw())
    assert parse_stock(stock_raw(**extra)) == parse_stock(stock_raw())


def test_boundaries_are_accepted() -> None:
    order = parse_order(order_raw(order_id="x" * 64, sku="é" * 64, quantity=MAX_QUANTITY))
    assert (len(order.order_id), len(order.sku), order.quantity) == (64, 64, MAX_QUANTITY)
    assert parse_order(order_raw(quantity=1)).quantity == 1


def test_stock_delivery_and_ts_formats() -> None:
    assert parse_stock(stock_raw()) == StockMove("s-1", "SKU-1", "delivery", 50, "sup-1", NOON)
    assert parse_stock(stock_raw(ts=1795694400)).ts == NOON


def test_stock_return_and_negative_adjustment() -> None:
    assert parse_stock(stock_raw(reason="return", quantity=1)).reason == "return"
    adjustment = parse_stock(stock_raw(reason="adjustment", quantity=-7))
    assert (adjustment.reason, adjustment.quantity) == ("adjustment", -7)


def test_supplier_id_is_optional_or_null() -> None:
    assert parse_stock(stock_raw(supplier_id=MISSING)).supplier_id is None
    assert parse_stock(stock_raw(supplier_id=None)).supplier_id is None


def test_supplier_id_may_be_empty_or_up_to_64_characters() -> None:
    assert parse_stock(stock_raw(supplier_id="")).supplier_id == ""
    assert parse_stock(stock_raw(supplier_id="s" * 64)).supplier_id == "s" * 64


# --- malformed input: every case goes to dead-letters with a precise reason --------

Parser = Callable[[bytes | None], object]

MALFORMED: list[tuple[str, Parser, bytes | None, str]] = [
    # (id, parser, raw value, text the reason must contain)
    ("truncated-json", parse_order, b'{"order_id": "o-1",', "not valid JSON"),
    ("trailing-garbage", parse_order, order_raw() + b" x", "not valid JSON"),
    ("single-quotes", parse_order, b"{'order_id': 'o-1'}", "not valid JSON"),
    ("nan-price", parse_order, with_raw_field(order_raw(), "unit_price", "NaN"), "not valid JSON"),
    ("inf-price", parse_order, with_raw_field(order_raw(), "unit_price", "1e400"), "infinity"),
    ("array", parse_order, b"[1, 2]", "value is not a JSON object (got array)"),
    ("string", parse_stock, b'"hello"', "value is not a JSON object (got string)"),
    ("json-null", parse_order, b"null", "value is not a JSON object (got null)"),
    ("empty", parse_order, b"", "empty message"),
    ("blank", parse_stock, b" \n\t", "empty message"),
    ("kafka-null", parse_stock, None, "empty message"),
    ("bad-utf8", parse_order, order_raw(sku="SKU-1").replace(b"SKU-1", b"SKU-\xff"), "UTF-8"),
    ("missing-order_id", parse_order, order_raw(order_id=MISSING), "missing field: order_id"),
    (
        "missing-customer",
        parse_order,
        order_raw(customer_id=MISSING),
        "missing field: customer_id",
    ),
    ("missing-sku", parse_order, order_raw(sku=MISSING), "missing field: sku"),
    ("missing-quantity", parse_order, order_raw(quantity=MISSING), "missing field: quantity"),
    ("missing-price", parse_order, order_raw(unit_price=MISSING), "missing field: unit_price"),
    ("missing-ts", parse_order, order_raw(ts=MISSING), "missing field: ts"),
    ("missing-event_id", parse_stock, stock_raw(event_id=MISSING), "missing field: event_id"),
    ("missing-stock-sku", parse_stock, stock_raw(sku=MISSING), "missing field: sku"),
    ("missing-reason", parse_stock, stock_raw(reason=MISSING), "missing field: reason"),
    ("missing-stock-qty", parse_stock, stock_raw(quantity=MISSING), "missing field: quantity"),
    ("missing-stock-ts", parse_stock, stock_raw(ts=MISSING), "missing field: ts"),
    ("order_id-number", parse_order, order_raw(order_id=17), "order_id: must be a string"),
    ("order_id-object", parse_order, order_raw(order_id={"id": 1}), "order_id: must be a string"),
    ("customer-empty", parse_order, order_raw(customer_id=""), "customer_id: must be a string"),
    ("sku-65-chars", parse_order, order_raw(sku="s" * 65), "sku: must be a string of 1-64"),
    ("sku-null", parse_order, order_raw(sku=None), "sku: must be a string"),
    ("event_id-65", parse_stock, stock_raw(event_id="e" * 65), "event_id: must be a string"),
    ("quantity-bool", parse_order, order_raw(quantity=True), "quantity: must be an integer"),
    ("quantity-2.0", parse_order, order_raw(quantity=2.0), "quantity: must be an integer"),
    ("quantity-2.5", parse_order, order_raw(quantity=2.5), "quantity: must be an integer"),
    ("quantity-string", parse_order, order_raw(quantity="3"), "quantity: must be an integer"),
    ("quantity-zero", parse_order, order_raw(quantity=0), "quantity: must be an integer >= 1"),
    ("quantity-neg", parse_order, order_raw(quantity=-3), "quantity: must be an integer >= 1"),
    ("quantity-2**53", parse_order, order_raw(quantity=2**53), "quantity: out of range"),
    (
        "quantity-1000001",
        parse_order,
        order_raw(quantity=MAX_QUANTITY + 1),
        "quantity: out of range, must be between 1 and 1000000",
    ),
    (
        "quantity-max-safe",
        parse_order,
        order_raw(quantity=9007199254740991),
        "quantity: out of range",
    ),
    (
        "delivery-1000001",
        parse_stock,
        stock_raw(quantity=MAX_QUANTITY + 1),
        "quantity: out of range, must be between 1 and 1000000",
    ),
    (
        "adjustment-minus-1000001",
        parse_stock,
        stock_raw(reason="adjustment", quantity=-MAX_QUANTITY - 1),
        "quantity: out of range, must be between -1000000 and 1000000",
    ),
    (
        "price-above-max",
        parse_order,
        order_raw(unit_price=MAX_UNIT_PRICE + 0.01),
        "unit_price: must be a number between 0 and 1000000",
    ),
    (
        "price-double-max",
        parse_order,
        order_raw(unit_price=1.7976931348623157e308),
        "unit_price: must be a number between 0 and 1000000",
    ),
    (
        "price-int-above-max",
        parse_order,
        order_raw(unit_price=MAX_UNIT_PRICE + 1),
        "unit_price: must be a number between 0 and 1000000",
    ),
    (
        "price-true",
        parse_order,
        order_raw(unit_price=True),
        "unit_price: must be a number between 0 and 1000000, got boolean true",
    ),
    (
        "quantity-huge",
        parse_order,
        with_raw_field(order_raw(), "quantity", "99999999999999999999999"),
        "quantity: out of range",
    ),
    ("price-negative", parse_order, order_raw(unit_price=-0.01), "unit_price: must be a number"),
    ("price-string", parse_order, order_raw(unit_price="19.99"), "unit_price: must be a number"),
    ("price-bool", parse_order, order_raw(unit_price=False), "unit_price: must be a number"),
    ("price-null", parse_order, order_raw(unit_price=None), "unit_price: must be a number"),
    ("reason-unknown", parse_stock, stock_raw(reason="theft"), "reason: must be one of"),
    ("reason-array", parse_stock, stock_raw(reason=["delivery"]), "reason: must be one of"),
    ("reason-case", parse_stock, stock_raw(reason="Delivery"), "reason: must be one of"),
    (
        "delivery-negative",
        parse_stock,
        stock_raw(quantity=-5),
        "quantity: must be an integer >= 1",
    ),
    (
        "return-zero",
        parse_stock,
        stock_raw(reason="return", quantity=0),
        "quantity: must be an integer >= 1",
    ),
    (
        "adjustment-zero",
        parse_stock,
        stock_raw(reason="adjustment", quantity=0),
        "quantity: must be a non-zero integer",
    ),
    (
        "adjustment-float",
        parse_stock,
        stock_raw(reason="adjustment", quantity=-1.5),
        "quantity: must be a non-zero integer",
    ),
    (
        "adjustment-huge",
        parse_stock,
        stock_raw(reason="adjustment", quantity=-(2**60)),
        "quantity: out of range",
    ),
    ("supplier-number", parse_stock, stock_raw(supplier_id=7), "supplier_id: must be null or"),
    (
        "supplier-65",
        parse_stock,
        stock_raw(supplier_id="s" * 65),
        "supplier_id: must be null or a string of 0-64 characters, got 65 characters",
    ),
    ("ts-garbage", parse_order, order_raw(ts="yesterday"), "ts: not an ISO-8601 time"),
    ("ts-date-only", parse_order, order_raw(ts="2026-11-26"), "without a time of day"),
    ("ts-bad-day", parse_order, order_raw(ts="2026-02-30T12:00:00Z"), "ts: not an ISO-8601"),
    ("ts-separator", parse_order, order_raw(ts="2026-11-26x12:00:00Z"), "ts: not an ISO-8601"),
    ("ts-hour-24", parse_stock, stock_raw(ts="2026-11-26T24:00:00Z"), "ts: not an ISO-8601"),
    ("ts-numeric-text", parse_order, order_raw(ts="1795694400"), "ts: not an ISO-8601"),
    ("ts-bool", parse_order, order_raw(ts=True), "ts: must be an ISO-8601 time string or"),
    ("ts-null", parse_stock, stock_raw(ts=None), "ts: must be an ISO-8601 time string or"),
    ("ts-object", parse_order, order_raw(ts={"s": 1}), "ts: must be an ISO-8601 time string or"),
    ("ts-negative", parse_order, order_raw(ts=-1), "ts: out of range"),
    ("ts-millis", parse_order, order_raw(ts=1795694400000), "milliseconds?"),
    (
        "ts-year-1",
        parse_order,
        order_raw(ts="0001-01-01T00:00:00Z"),
        "must be on or after 2000-01-01",
    ),
    (
        "ts-1999",
        parse_order,
        order_raw(ts="1999-12-31T23:59:59Z"),
        "must be on or after 2000-01-01",
    ),
    (
        "ts-1999-number",
        parse_stock,
        stock_raw(ts=MIN_EVENT_TS - 1),
        "must be on or after 2000-01-01",
    ),
    ("ts-zero", parse_stock, stock_raw(ts=0), "must be on or after 2000-01-01"),
    ("ts-year-9999", parse_order, order_raw(ts=253402214400), "ts: out of range"),
    ("ts-year-9999-text", parse_stock, stock_raw(ts="9999-12-31T23:59:59Z"), "ts: out of range"),
]


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [pytest.param(parse, raw, expected, id=name) for name, parse, raw, expected in MALFORMED],
)
def test_malformed_input_is_rejected_with_reason(
    parse: Parser, raw: bytes | None, expected: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse(raw)
    assert expected in str(caught.value)
    assert caught.value.reason == str(caught.value)
    if caught.value.field is not None:
        assert caught.value.field in str(caught.value)


def test_reasons_are_exact_and_readable() -> None:
    def reason(parse: Parser, raw: bytes | None) -> str:
        with pytest.raises(InvalidEvent) as caught:
            parse(raw)
        return str(caught.value)

    assert reason(parse_order, order_raw(quantity=-3)) == (
        "quantity: must be an integer >= 1, got -3"
    )
    assert reason(parse_order, order_raw(sku="s" * 65)) == (
        "sku: must be a string of 1-64 characters, got 65 characters"
    )
    assert reason(parse_order, order_raw(sku=MISSING)) == "missing field: sku"
    assert reason(parse_order, order_raw(ts="yesterday")) == (
        "ts: not an ISO-8601 time: 'yesterday'"
    )
    assert reason(parse_order, b"[]") == "value is not a JSON object (got array)"
    assert reason(parse_order, b"") == "empty message"
    bad_json = reason(parse_order, b'{"a": x}')  # the details are orjson's wording
    assert bad_json.startswith("not valid JSON: ")
    assert bad_json.endswith("line 1 column 7 (char 6)")
    assert reason(parse_order, b'{"sku": "\xff"}').startswith("value: not valid UTF-8")
    assert reason(parse_order, order_raw(quantity=True)) == (
        "quantity: must be an integer >= 1, got boolean true"
    )
    assert "a float" in reason(parse_order, order_raw(quantity=2.0))
    assert reason(parse_stock, stock_raw(quantity=-5)) == (
        "quantity: must be an integer >= 1 for a delivery, got -5"
    )


def test_invalid_event_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError) as caught:
        parse_order(order_raw(unit_price=-1))
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.field == "unit_price"


# Anything a producer can send either parses or is rejected with InvalidEvent: never
# another exception, which would stop the agent instead of dead-lettering the message.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    for parse in (parse_order, parse_stock):
        with contextlib.suppress(InvalidEvent):
            parse(raw)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: json_values
            | st.sampled_from(["delivery", "return", "adjustment", "2026-11-26T12:00:00Z"])
            for name in [
                *("order_id", "event_id", "customer_id", "sku", "quantity"),
                *("unit_price", "reason", "supplier_id", "ts"),
            ]
        },
    )
)
def test_arbitrary_objects_never_crash(value: dict[str, Any]) -> None:
    # The stdlib writes what orjson refuses to (huge integers, Infinity): all the better.
    raw = json.dumps(value).encode()
    for parse in (parse_order, parse_stock):
        with contextlib.suppress(InvalidEvent):
            parse(raw)


# --- times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T12:00:00Z", NOON),
        ("2026-11-26T13:00:00+01:00", NOON),
        ("2026-11-26T07:30:00-04:30", NOON),
        ("2026-11-26T12:00:00+00:00", NOON),
        ("2026-11-26T12:00:00", NOON),  # no offset means UTC
        ("2026-11-26T12:00:00.250Z", NOON + 0.25),
        ("2026-11-26T12:00:00.123456Z", NOON + 0.123456),
        ("2026-11-26t12:00:00z", NOON),  # RFC 3339 lower case
        ("2026-11-26 12:00:00Z", NOON),  # RFC 3339 space separator
        ("20261126T120000Z", NOON),  # ISO-8601 basic format
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_parse_ts_iso(text: str, expected: float) -> None:
    assert parse_ts(text) == pytest.approx(expected, abs=1e-6)


def test_parse_ts_numbers() -> None:
    assert parse_ts(1795694400) == NOON
    assert isinstance(parse_ts(1795694400), float)
    assert parse_ts(1795694400.5) == NOON + 0.5
    assert parse_ts(0) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        True,
        None,
        [],
        "",
        "2026-11-26",
        "12:00:00",
        "2026-11-26T12:00:00Z junk",
        float("nan"),
        float("inf"),
        -0.5,
        MAX_TS,
        pytest.param(10**400, id="10**400"),
    ],
)
def test_parse_ts_rejects(value: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^when: "):
        parse_ts(value, field="when")


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (NOON, "2026-11-26T12:00:00Z"),
        (NOON + 0.25, "2026-11-26T12:00:00.250Z"),
        (NOON + 0.0004, "2026-11-26T12:00:00Z"),
        (NOON + 0.9996, "2026-11-26T12:00:01Z"),
        (0.0, "1970-01-01T00:00:00Z"),
        (MAX_TS + 86399.999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_ts(ts: float, text: str) -> None:
    assert format_ts(ts) == text


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), 1e20, -1e20])
def test_format_ts_rejects_what_is_not_a_time(ts: float) -> None:
    with pytest.raises(ValueError, match="cannot format ts"):
        format_ts(ts)


def test_format_ts_matches_datetime() -> None:
    moment = datetime(2026, 3, 29, 1, 59, 58, 7000, tzinfo=UTC)
    assert format_ts(moment.timestamp()) == "2026-03-29T01:59:58.007Z"


@PROPERTY
@given(st.floats(min_value=0.0, max_value=MAX_TS - 0.001))
def test_format_then_parse_round_trips_within_a_millisecond(ts: float) -> None:
    text = format_ts(ts)
    assert text.endswith("Z")
    assert abs(parse_ts(text) - ts) <= 0.001


@PROPERTY
@given(st.integers(min_value=0, max_value=int(MAX_TS) - 1))
def test_whole_seconds_round_trip_exactly(ts: int) -> None:
    assert parse_ts(format_ts(ts)) == ts


# --- bounds against the worker's clock (MAX_FUTURE_SECONDS) ------------------------


def test_ts_up_to_max_future_ahead_of_the_clock_is_accepted() -> None:
    now = NOON
    assert parse_order(order_raw(ts=now + 3600), now=now).ts == now + 3600
    assert parse_stock(stock_raw(ts=now + 10), now=now, max_future_s=10).ts == now + 10
    assert parse_order(order_raw(ts=MIN_EVENT_TS), now=now).ts == MIN_EVENT_TS
    assert parse_order(order_raw(ts="2000-01-01T00:00:00Z"), now=now).ts == MIN_EVENT_TS


@pytest.mark.parametrize(
    "ts",
    [
        NOON + 3600.001,
        "2026-11-26T13:00:01Z",
        253402214400,  # year 9999 in seconds
        "9999-12-31T23:59:59Z",
        1e30,
    ],
)
def test_ts_too_far_ahead_of_the_clock_is_rejected_for_that(ts: object) -> None:
    for parse, raw in ((parse_order, order_raw(ts=ts)), (parse_stock, stock_raw(ts=ts))):
        with pytest.raises(InvalidEvent) as caught:
            parse(raw, now=NOON)
        reason = str(caught.value)
        assert reason.startswith(
            "ts: too far in the future, must be at most 3600 s ahead of the worker's clock "
            "(2026-11-26T12:00:00Z)"
        ), reason
        assert "milliseconds" not in reason
        assert caught.value.field == "ts"


def test_year_9999_in_seconds_is_not_called_milliseconds() -> None:
    for now in (None, NOON):
        with pytest.raises(InvalidEvent) as caught:
            parse_order(order_raw(ts=253402214400), now=now)
        assert "milliseconds" not in str(caught.value)
    with pytest.raises(InvalidEvent) as caught:
        parse_ts(253402214400)
    assert "milliseconds" not in str(caught.value)


def test_milliseconds_are_suggested_only_for_a_plausible_millisecond_time() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_order(order_raw(ts=1795694400000), now=NOON)
    assert str(caught.value).endswith("got 1795694400000 (milliseconds? ts numbers are seconds)")
    # A millisecond time more than MAX_FUTURE_SECONDS ahead is not plausible either.
    with pytest.raises(InvalidEvent) as caught:
        parse_order(order_raw(ts=(NOON + 7200) * 1000), now=NOON)
    assert "milliseconds" not in str(caught.value)
    with pytest.raises(InvalidEvent) as caught:
        parse_ts(1795694400000)
    assert "milliseconds?" in str(caught.value)


@PROPERTY
@given(
    st.floats(min_value=MIN_EVENT_TS, max_value=4_000_000_000.0),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    st.integers(min_value=1, max_value=10**7),
)
def test_event_ts_bounds_property(now: float, offset: float, max_future_s: int) -> None:
    ts = now + offset
    inside = MIN_EVENT_TS <= ts <= now + max_future_s and ts < MAX_TS
    try:
        got = event_ts(ts, now, max_future_s)
    except InvalidEvent as exc:
        assert not inside, (ts, str(exc))
    else:
        assert inside and got == ts


@PROPERTY
@given(
    st.integers(min_value=-(10**7), max_value=10**7),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**7)),
)
def test_quantity_and_price_bounds_property(quantity: int, price: float) -> None:
    raw = json.dumps(order_value(quantity=quantity, unit_price=price)).encode()
    valid_price = (
        type(price) in (int, float) and not math.isnan(price) and 0 <= price <= MAX_UNIT_PRICE
    )
    try:
        order = parse_order(raw)
    except InvalidEvent:
        assert not (1 <= quantity <= MAX_QUANTITY and valid_price)
    else:
        assert 1 <= order.quantity <= MAX_QUANTITY and 0 <= order.unit_price <= MAX_UNIT_PRICE
        assert order.unit_price.is_finite()
    move_raw = json.dumps(stock_value(reason="adjustment", quantity=quantity)).encode()
    try:
        move = parse_stock(move_raw)
    except InvalidEvent:
        assert quantity == 0 or abs(quantity) > MAX_QUANTITY
    else:
        assert move.quantity == quantity
