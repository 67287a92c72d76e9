"""Parsing and validation of raw ``orders`` and ``stock`` message values.

This module owns the input rules of the contract ("Input topics"): it turns the bytes
of a Kafka message value into an :class:`~app.models.Order` or a
:class:`~app.models.StockMove`, or raises :class:`InvalidEvent` whose reason is the
``error`` of the dead letter. It also owns the wire format of times: :func:`parse_ts`
for input, :func:`format_ts` for output.

It is on the hot path (called once per input message), so each value is decoded by a
single ``orjson.loads`` and checked with direct dict lookups and ``type() is`` tests;
the work of describing what is wrong is only done once something is.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from app.domain.models import Order, StockMove, StockReason

MAX_ID_CHARS = 64
"""Longest id (order_id, customer_id, sku, event_id, supplier_id), in characters."""

MAX_QUANTITY = 1_000_000
"""Largest quantity accepted, in absolute value (the contract's bounds). With at most a
few billion events per SKU, no level or window sum comes near 64 bits, and consumers
that read JSON numbers as doubles (JavaScript dashboards) see every sum exactly."""

MAX_UNIT_PRICE = 1_000_000
"""Largest unit_price accepted; quantity x unit_price is then at most 10**12, and a
window's revenue stays an exact, finite number."""

MIN_TS = 0.0
"""Earliest time :func:`parse_ts` accepts: 1970-01-01T00:00:00Z."""

MAX_TS = 253402214400.0
"""Times :func:`parse_ts` accepts are before 9999-12-31T00:00:00Z. The last day of year
9999 is left out so that the end of a window (up to a day long) can still be formatted."""

MIN_EVENT_TS = 946684800.0
"""Earliest accepted event time: 2000-01-01T00:00:00Z (the contract's bounds)."""

DEFAULT_MAX_FUTURE_S = 3600.0
"""How far ahead of the worker's clock an event time may be (``MAX_FUTURE_SECONDS``)."""

_RANGE_TEXT = "between 1970-01-01T00:00:00Z and 9999-12-31T00:00:00Z"
_EARLIEST_TEXT = "2000-01-01T00:00:00Z"
_EVENT_RANGE_TEXT = "between 2000-01-01T00:00:00Z and 9999-12-31T00:00:00Z"

REASONS: tuple[StockReason, ...] = ("delivery", "return", "adjustment")
"""Every stock ``reason``; only ``adjustment`` may take stock out (quantity < 0)."""
_REASONS: dict[str, StockReason] = {reason: reason for reason in REASONS}

_ZERO = Decimal(0)
# Decimal(repr(float)) is the costliest step of parse_order, and a catalogue has few
# distinct prices: memoise them. Cleared when full so it stays bounded.
_PRICE_CACHE: dict[float, Decimal] = {}
_PRICE_CACHE_SIZE = 4096

_EPOCH_NAIVE = datetime(1970, 1, 1)
# format_ts runs a few times per event, and the events of a batch share few distinct
# seconds: memoise the text of each second. Cleared when full so it stays bounded.
_SECONDS_TEXT: dict[int, str] = {}
_SECONDS_TEXT_SIZE = 4096
_loads = orjson.loads
_fromisoformat = datetime.fromisoformat


class InvalidEvent(ValueError):
    """A message value breaks the input contract. ``str(exc)`` is the human-readable
    reason that goes into the dead letter's ``error``."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        "What is wrong, starting with the field name when one field is at fault."
        self.field = field
        "The offending field, or None when the whole value is at fault."


# --- public API -------------------------------------------------------------------


def parse_order(
    raw: bytes | None, now: float | None = None, max_future_s: float = DEFAULT_MAX_FUTURE_S
) -> Order:
    """Validate one ``orders`` message value; raise :class:`InvalidEvent` if it is bad.

    ``now`` is the worker's clock (epoch seconds): ``ts`` may be at most ``max_future_s``
    ahead of it. Ingest always passes it; ``None`` (offline tools, replays whose wall
    clock is not the worker's) checks every bound but that one.
    """
    obj = _load_object(raw)
    try:
        order_id = obj["order_id"]
        customer_id = obj["customer_id"]
        sku = obj["sku"]
        quantity = obj["quantity"]
        unit_price = obj["unit_price"]
        ts = obj["ts"]
    except KeyError as exc:
        raise _missing(exc) from None
    if type(order_id) is not str or not 0 < len(order_id) <= MAX_ID_CHARS:
        raise _string_error("order_id", order_id)
    if type(customer_id) is not str or not 0 < len(customer_id) <= MAX_ID_CHARS:
        raise _string_error("customer_id", customer_id)
    if type(sku) is not str or not 0 < len(sku) <= MAX_ID_CHARS:
        raise _string_error("sku", sku)
    # `type() is int` on purpose: JSON true/false arrive as bool, a subclass of int.
    if type(quantity) is not int or not 0 < quantity <= MAX_QUANTITY:
        raise _integer_error("quantity", quantity, "an integer >= 1", 1)
    price = _price(unit_price)
    return Order(order_id, customer_id, sku, quantity, price, event_ts(ts, now, max_future_s))


def parse_stock(
    raw: bytes | None, now: float | None = None, max_future_s: float = DEFAULT_MAX_FUTURE_S
) -> StockMove:
    """Validate one ``stock`` message value; raise :class:`InvalidEvent` if it is bad.

    ``now`` and ``max_future_s`` as for :func:`parse_order`.
    """
    obj = _load_object(raw)
    try:
        event_id = obj["event_id"]
        sku = obj["sku"]
        reason = obj["reason"]
        quantity = obj["quantity"]
        ts = obj["ts"]
    except KeyError as exc:
        raise _missing(exc) from None
    if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_CHARS:
        raise _string_error("event_id", event_id)
    if type(sku) is not str or not 0 < len(sku) <= MAX_ID_CHARS:
        raise _string_error("sku", sku)
    # Type first: a list or an object as reason is unhashable.
    kind = _REASONS.get(reason) if type(reason) is str else None
    if kind is None:
        raise InvalidEvent(
            f"reason: must be one of 'delivery', 'return', 'adjustment', got {_describe(reason)}",
            "reason",
        )
    if kind == "adjustment":
        if type(quantity) is not int or quantity == 0 or abs(quantity) > MAX_QUANTITY:
            raise _integer_error("quantity", quantity, "a non-zero integer", -MAX_QUANTITY)
    elif type(quantity) is not int or not 0 < quantity <= MAX_QUANTITY:
        raise _integer_error("quantity", quantity, f"an integer >= 1 for a {kind}", 1)
    supplier_id = obj.get("supplier_id")
    # Unlike the ids, an empty supplier_id is valid: it is free text, and optional.
    if supplier_id is not None and (
        type(supplier_id) is not str or len(supplier_id) > MAX_ID_CHARS
    ):
        raise _string_error("supplier_id", supplier_id, nullable=True)
    return StockMove(event_id, sku, kind, quantity, supplier_id, event_ts(ts, now, max_future_s))


def event_ts(
    value: object,
    now: float | None = None,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    field: str = "ts",
) -> float:
    """The event time of a decoded JSON value, within the contract's bounds.

    As :func:`parse_ts`, but the time must also be on or after 2000-01-01T00:00:00Z and
    (when ``now`` is given) at most ``max_future_s`` seconds ahead of ``now``.
    """
    latest = MAX_TS if now is None else min(MAX_TS, now + max_future_s)
    if type(value) is float or type(value) is int:
        # Compare before float(): a huge int would overflow, NaN fails every test.
        if MIN_EVENT_TS <= value <= latest and value < MAX_TS:
            return float(value)
        raise _event_range_error(field, value, value, now, max_future_s, latest)
    ts = _to_seconds(value, field)
    if MIN_EVENT_TS <= ts <= latest and ts < MAX_TS:
        return ts
    raise _event_range_error(field, value, ts, now, max_future_s, latest)


def parse_ts(value: object, field: str = "ts") -> float:
    """Event time of a decoded JSON value, as float seconds since the epoch (UTC).

    Accepts an ISO-8601 date and time (``2026-11-26T12:00:00Z``,
    ``2026-11-26T13:00:00+01:00``, fractional seconds; no offset means UTC) or a JSON
    number of seconds since the epoch, from 1970 to the end of year 9999. Raises
    :class:`InvalidEvent` naming ``field``. Event times have narrower bounds: see
    :func:`event_ts`.
    """
    if type(value) is float or type(value) is int:
        # Compare before float(): a huge int would overflow, NaN fails every test.
        if not MIN_TS <= value < MAX_TS:
            raise _ts_range_error(field, value)
        return float(value)
    ts = _to_seconds(value, field)
    if not MIN_TS <= ts < MAX_TS:
        raise _ts_range_error(field, value)
    return ts


def _to_seconds(value: object, field: str) -> float:
    """Seconds since the epoch of a JSON time (number or ISO-8601 text), unchecked range."""
    if type(value) is str:
        # Fast path for the usual shape, 2026-11-26T12:00:00[.fff]Z: when Python parses
        # it, it is a UTC time and nothing else needs checking.
        if value[-1:] == "Z" and value[10:11] == "T" and value[4:5] == "-":
            try:
                ts = _fromisoformat(value).timestamp()
            except ValueError:
                ts = _parse_iso(value, field)  # raises, with the details
        else:
            ts = _parse_iso(value, field)
        return ts
    if type(value) is float or type(value) is int:
        return float(value)
    raise InvalidEvent(
        f"{field}: must be an ISO-8601 time string or a number of seconds since "
        f"the epoch, got {_describe(value)}",
        field,
    )


def format_ts(ts: float) -> str:
    """ISO-8601 UTC text of ``ts``, the output format of every time.

    Whole seconds give ``2026-11-26T12:00:00Z``, anything else is rounded to the
    millisecond: ``2026-11-26T12:00:00.250Z``. Raises ``ValueError`` outside years
    1-9999 or for NaN/infinity.
    """
    try:
        seconds, millis = divmod(round(ts * 1000), 1000)
        text = _SECONDS_TEXT.get(seconds)
        if text is None:
            text = (_EPOCH_NAIVE + timedelta(seconds=seconds)).isoformat()
            if len(_SECONDS_TEXT) >= _SECONDS_TEXT_SIZE:
                _SECONDS_TEXT.clear()
            _SECONDS_TEXT[seconds] = text
    except (OverflowError, ValueError):
        raise ValueError(f"cannot format ts {ts!r}: not a time in years 1-9999") from None
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


# --- decoding ---------------------------------------------------------------------


def _load_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent("empty message (the value is null, e.g. a tombstone)")
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _json_error(raw, exc) from None
    if type(obj) is not dict:
        raise InvalidEvent(f"value is not a JSON object (got {_json_type(obj)})")
    return obj


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> InvalidEvent:
    data = bytes(raw)
    if not data.strip():
        return InvalidEvent("empty message")
    # orjson's own wording for bad UTF-8 is misleading ("surrogates not allowed").
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidEvent(
            f"value: not valid UTF-8 (byte 0x{data[bad.start]:02x} at offset {bad.start})",
            "value",
        )
    return InvalidEvent(f"not valid JSON: {exc}")


def _price(value: object) -> Decimal:
    # Decimal(repr(x)) gives the shortest decimal that reads back as x, i.e. the digits
    # the producer wrote: 19.99 stays 19.99 (Decimal(19.99) would be 19.989999...).
    if type(value) is float:
        if 0.0 < value <= MAX_UNIT_PRICE:
            price = _PRICE_CACHE.get(value)
            if price is None:
                if len(_PRICE_CACHE) >= _PRICE_CACHE_SIZE:
                    _PRICE_CACHE.clear()
                price = _PRICE_CACHE[value] = Decimal(repr(value))
            return price
        if value == 0.0:  # also -0.0, which must not turn into Decimal('-0.0')
            return _ZERO
    elif type(value) is int and 0 <= value <= MAX_UNIT_PRICE:
        return Decimal(value)
    raise InvalidEvent(
        f"unit_price: must be a number between 0 and {MAX_UNIT_PRICE}, got {_describe(value)}",
        "unit_price",
    )


# --- times ------------------------------------------------------------------------


def _parse_iso(text: str, field: str) -> float:
    n = len(text)
    # Python 3.11 accepts any character between date and time ('2026-11-26x12:00'),
    # ISO-8601 and RFC 3339 only 'T' (or 't', or a space): check it ourselves. The
    # date part is 10 characters (2026-11-26) or 8 in basic format (20261126).
    if 11 <= n <= 64 and (text[10] if text[4] == "-" else text[8]) in "Tt ":
        if text[-1] == "z":  # RFC 3339 allows a lower-case zone designator
            text = text[:-1] + "Z"
        try:
            moment = _fromisoformat(text)
        except ValueError as exc:
            detail = str(exc)
            # Keep Python's explanation when it says more than "invalid".
            hint = "" if detail.startswith("Invalid isoformat") else f" ({detail})"
            raise InvalidEvent(
                f"{field}: not an ISO-8601 time: {_short_repr(text)}{hint}", field
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if 8 <= n <= 10:
        try:
            date.fromisoformat(text)
        except ValueError:
            pass
        else:
            raise InvalidEvent(
                f"{field}: not an ISO-8601 time: {_short_repr(text)} is a date "
                "without a time of day",
                field,
            )
    raise InvalidEvent(f"{field}: not an ISO-8601 time: {_short_repr(text)}", field)


def _ts_range_error(field: str, value: object) -> InvalidEvent:
    reason = f"{field}: out of range, must be {_RANGE_TEXT}, got {_describe(value)}"
    return InvalidEvent(reason + _millis_hint(value, MAX_TS), field)


def _event_range_error(
    field: str,
    value: object,
    ts: float,
    now: float | None,
    max_future_s: float,
    latest: float,
) -> InvalidEvent:
    got = _describe(value)
    if ts >= MIN_EVENT_TS and now is not None:  # too late (NaN cannot come from JSON)
        reason = (
            f"{field}: too far in the future, must be at most {max_future_s:g} s ahead of "
            f"the worker's clock ({_clock_text(now)}), got {got}"
        )
    elif ts >= MIN_EVENT_TS:
        reason = f"{field}: out of range, must be {_EVENT_RANGE_TEXT}, got {got}"
    else:
        reason = f"{field}: out of range, must be on or after {_EARLIEST_TEXT}, got {got}"
    return InvalidEvent(reason + _millis_hint(value, latest), field)


def _millis_hint(value: object, latest: float) -> str:
    # Only a number that reads as a plausible time once divided by 1000 earns the hint:
    # 253402214400 is year 9999 in seconds, and in milliseconds it would be 1978.
    if (type(value) is int or type(value) is float) and (
        MIN_EVENT_TS * 1000 <= value <= latest * 1000
    ):
        return " (milliseconds? ts numbers are seconds)"
    return ""


def _clock_text(now: float) -> str:
    try:
        return format_ts(round(now))
    except ValueError:
        return repr(now)


# --- error reasons (cold path) ----------------------------------------------------


def _missing(exc: KeyError) -> InvalidEvent:
    name = str(exc.args[0])
    return InvalidEvent(f"missing field: {name}", name)


def _string_error(field: str, value: object, *, nullable: bool = False) -> InvalidEvent:
    rule = f"null or a string of 0-{MAX_ID_CHARS}" if nullable else f"a string of 1-{MAX_ID_CHARS}"
    if type(value) is str:
        got = "an empty string" if not value else f"{len(value)} characters"
    else:
        got = _describe(value)
    return InvalidEvent(f"{field}: must be {rule} characters, got {got}", field)


def _integer_error(field: str, value: object, rule: str, minimum: int) -> InvalidEvent:
    if (type(value) is int or type(value) is float) and abs(value) > MAX_QUANTITY:
        # orjson reads integers beyond 64 bits as floats: 1e+23 may have been written
        # as 99999999999999999999999, so say "out of range", not "not an integer".
        return InvalidEvent(
            f"{field}: out of range, must be between {minimum} and {MAX_QUANTITY}, "
            f"got {_describe(value)}",
            field,
        )
    got = _describe(value)
    if type(value) is float and value.is_integer():
        got += " (a float: write integers without a decimal point or exponent)"
    return InvalidEvent(f"{field}: must be {rule}, got {got}", field)


def _describe(value: object) -> str:
    """The offending value as its producer would recognise it in their JSON."""
    if value is None:
        return "null"
    if value is True:
        return "boolean true"
    if value is False:
        return "boolean false"
    if type(value) is int and not -(10**30) < value < 10**30:
        # Only reachable through parse_ts(): JSON integers are at most 20 digits.
        return "a number too large to show"
    if type(value) is int or type(value) is float:
        return repr(value)
    if type(value) is str:
        return "string " + _short_repr(value)
    return "an object" if type(value) is dict else "an array"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "number"


def _short_repr(text: str, limit: int = 40) -> str:
    # Error messages end up in dead letters and logs: never quote a megabyte.
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
