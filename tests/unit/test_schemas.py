"""The published input schemas against the validator they are built from (app/domain/schemas.py).

Every message the validator accepts must be valid under its topic's schema, and every
message it dead-letters must not be, except the kinds ``BEYOND_SCHEMA`` names (no JSON
Schema can tell them apart); hypothesis searches for a counter-example.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.domain import events, schemas
from app.domain.events import InvalidEvent, parse_order, parse_stock
from app.tools.scenarios import MALFORMED_KINDS, malformed_message

VALIDATORS = {topic: Draft202012Validator(schemas.schema(topic)) for topic in schemas.INPUT_TOPICS}
PARSERS = {"orders": parse_order, "stock": parse_stock}
DROP = object()


def test_every_schema_is_a_valid_draft_2020_12_schema() -> None:
    every = schemas.all_schemas()
    assert set(every) == {
        "orders",
        "stock",
        "order-status",
        "stock-levels",
        "supplier-orders",
        "expedites",
        "window-results",
        "dead-letters",
    }
    for topic, schema in every.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(topic)


def test_limits_come_from_the_validator() -> None:
    order = schemas.schema("orders")["properties"]
    assert order["quantity"]["maximum"] == events.MAX_QUANTITY
    assert order["sku"]["maxLength"] == events.MAX_ID_CHARS
    stock = schemas.schema("stock")["properties"]
    assert stock["reason"]["enum"] == list(events.REASONS)
    numeric_ts = order["ts"]["anyOf"][1]
    earliest = getattr(events, "MIN_EVENT_TS", events.MIN_TS)  # the bounds of issue 13
    assert (numeric_ts["minimum"], numeric_ts["exclusiveMaximum"]) == (earliest, events.MAX_TS)
    assert order["unit_price"].get("maximum") == getattr(events, "MAX_UNIT_PRICE", None)


def beyond_schema(exc: InvalidEvent, message: Any) -> bool:
    """The dead-letter kinds of BEYOND_SCHEMA."""
    if "(a float: write integers" in exc.reason:
        return True
    # Times: a string's calendar and range (the tests give the validator no clock).
    return exc.field == "ts" and isinstance(message.get("ts"), str)


def check(topic: str, message: Any) -> None:
    raw = orjson.dumps(message)
    valid = VALIDATORS[topic].is_valid(message)
    try:
        PARSERS[topic](raw)
    except InvalidEvent as exc:
        assert not valid or beyond_schema(exc, message), (exc.reason, message)
    else:
        assert valid, (message, [e.message for e in VALIDATORS[topic].iter_errors(message)])


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
)
ids = st.one_of(st.text(min_size=1, max_size=64), st.text(max_size=70), junk)
quantities = st.one_of(
    st.integers(-3, 3),
    st.integers(-events.MAX_QUANTITY - 2, events.MAX_QUANTITY + 2),
    st.sampled_from([events.MAX_QUANTITY, events.MAX_QUANTITY + 1, -events.MAX_QUANTITY]),
    st.floats(-10, 10).map(float),
    st.sampled_from([2.0, 1e3, -0.0]),
    junk,
)
prices = st.one_of(
    st.floats(-5, 1e7), st.integers(-5, 10**7), st.sampled_from([0, 0.0, -0.0]), junk
)
ZONES = [UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))]


@st.composite
def iso_times(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1969, 12, 30), max_value=datetime(9999, 12, 31)))
    zone = draw(st.sampled_from([None, *ZONES]))
    if zone is not None:
        moment = moment.replace(tzinfo=zone)
    text = moment.isoformat(sep=draw(st.sampled_from(["T", " ", "t"])))
    if zone is UTC and draw(st.booleans()):
        text = text.replace("+00:00", draw(st.sampled_from(["Z", "z"])))
    return text


times = st.one_of(
    iso_times(),
    st.floats(-10, 3e11),
    st.integers(-10, 3 * 10**11),
    st.sampled_from(
        [
            "2026-11-26",
            "yesterday",
            "2026-11-26T12:00:00Z ",
            "20261126T120000Z",
            "2026-02-30T12:00Z",
        ]
    ),
    junk,
)


@st.composite
def messages(draw: st.DrawFn, fields: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Mostly valid messages: each field good with 85% odds, else anything or missing."""
    message: dict[str, Any] = {}
    for name, (good, anything) in fields.items():
        if draw(st.integers(0, 99)) < 85:
            message[name] = draw(good)
        elif draw(st.integers(0, 4)):
            message[name] = draw(anything)
    if draw(st.booleans()):
        message["extra"] = draw(junk)  # unknown fields are ignored
    return message


good_ids = st.text(min_size=1, max_size=events.MAX_ID_CHARS)
good_times = st.one_of(iso_times(), st.floats(0, 4e9), st.integers(0, 4 * 10**9))
ORDER_FIELDS = {
    "order_id": (good_ids, ids),
    "customer_id": (good_ids, ids),
    "sku": (good_ids, ids),
    "quantity": (st.integers(1, events.MAX_QUANTITY), quantities),
    "unit_price": (st.one_of(st.floats(0, 1e6), st.integers(0, 10**6)), prices),
    "ts": (good_times, times),
}
STOCK_FIELDS = {
    "event_id": (good_ids, ids),
    "sku": (good_ids, ids),
    "reason": (
        st.sampled_from(events.REASONS),
        st.one_of(st.sampled_from(["theft", "", "Delivery"]), junk),
    ),
    "quantity": (st.integers(1, events.MAX_QUANTITY), quantities),
    "supplier_id": (st.one_of(st.none(), good_ids), ids),
    "ts": (good_times, times),
}
PROPERTY = settings(max_examples=600, deadline=None, database=None)


@PROPERTY
@given(messages(ORDER_FIELDS))
def test_orders_schema_agrees_with_the_validator(message: dict[str, Any]) -> None:
    check("orders", message)


@PROPERTY
@given(messages(STOCK_FIELDS))
def test_stock_schema_agrees_with_the_validator(message: dict[str, Any]) -> None:
    check("stock", message)


@PROPERTY
@given(junk)
def test_a_value_that_is_no_object_is_invalid_for_both(value: Any) -> None:
    for topic in schemas.INPUT_TOPICS:
        assert not VALIDATORS[topic].is_valid(value)


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_every_malformed_kind_is_invalid_under_the_schema(kind: str) -> None:
    topic, value = malformed_message(kind, ts_ms=1_795_694_400_000)
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    if raw is None or not raw.strip():
        return  # a null or empty value is no JSON document: nothing to validate
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return  # not JSON (or not UTF-8): invalid before any schema
    if kind == "float-quantity":
        assert VALIDATORS[topic].is_valid(message)  # BEYOND_SCHEMA[0]
        assert "decimal point" in schemas.BEYOND_SCHEMA[0]
        return
    assert not VALIDATORS[topic].is_valid(message), kind


def test_valid_scenario_events_are_valid_under_the_schema() -> None:
    from app.tools.scenarios import generate

    for n, event in enumerate(generate("steady", seed=3)):
        if n >= 500:
            break
        if isinstance(event.value, dict):
            assert VALIDATORS[event.topic].is_valid(event.value), event
