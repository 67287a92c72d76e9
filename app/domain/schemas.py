"""Published JSON Schemas (draft 2020-12) of every input and output topic.

This module owns the schemas that ``GET /schemas`` serves and ``faust -A app inject
--validate`` stands for. They are built, not written: the input schemas from the
validator's own limits and choices in :mod:`app.domain.events` (``MAX_ID_CHARS``,
``MAX_QUANTITY``, ``MAX_UNIT_PRICE``, ``MIN_EVENT_TS``, ``MAX_TS``, the stock reasons),
so a changed limit changes
the schema with it; the output schemas from the field table below, which a test holds
to what the tracker and ingest really write (same fields, nothing more, nothing less).
A property test (tests/unit/test_schemas.py) checks that every message the validator
accepts is valid under the schema and every kind it dead-letters is not, except the
kinds in :data:`BEYOND_SCHEMA`, which no JSON Schema can tell apart.
"""

from __future__ import annotations

from typing import Any, Final

from app.domain import events

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ID_BASE: Final = "urn:stock-tracker:schema:"

# The contract's bounds on unit_price and on the earliest event time, as the validator
# (app/domain/events.py) has them.
MAX_UNIT_PRICE: Final[float | None] = events.MAX_UNIT_PRICE
MIN_EVENT_TS: Final[float] = events.MIN_EVENT_TS

BEYOND_SCHEMA: Final = (
    "an integer written with a decimal point or an exponent (2.0, 2e0): JSON Schema "
    "counts it as an integer, the worker does not",
    "a ts string of the right shape that is no real time (2026-02-30T12:00:00Z) or "
    "lies outside the accepted range: JSON Schema cannot compare times",
    "a ts more than MAX_FUTURE_SECONDS ahead of the worker's clock: a schema has no clock",
)
"""Dead-lettered kinds a valid-looking message can still be: checked by the worker
(and by ``inject --validate``, which uses the worker's validator), not by the schema."""

# What app.events.parse_ts accepts as text: a date (2026-11-26 or 20261126), 'T', 't'
# or a space, then a time of day with optional fraction and offset (Python's
# datetime.fromisoformat decides the rest; see BEYOND_SCHEMA).
_ISO_PATTERN: Final = r"^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8})[Tt ][0-9][0-9:.,+\-Zz]*$"


def _id(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": events.MAX_ID_CHARS,
        "description": description,
    }


def _event_time() -> dict[str, Any]:
    return {
        "description": (
            "Event time: an ISO-8601 date and time (no offset means UTC) or a number of "
            "seconds since the epoch."
        ),
        "anyOf": [
            {
                "type": "string",
                "minLength": 11,
                "maxLength": 64,
                "pattern": _ISO_PATTERN,
            },
            {"type": "number", "minimum": MIN_EVENT_TS, "exclusiveMaximum": events.MAX_TS},
        ],
    }


def _input(title: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "title": title,
        "description": "Unknown extra fields are ignored. Not caught by this schema: "
        + "; ".join(BEYOND_SCHEMA)
        + ".",
        "type": "object",
        "required": required,
        "properties": properties,
    }


def _price() -> dict[str, Any]:
    price: dict[str, Any] = {"type": "number", "minimum": 0}
    if MAX_UNIT_PRICE is not None:
        price["maximum"] = MAX_UNIT_PRICE
    return price


def orders_schema() -> dict[str, Any]:
    return _input(
        "orders: a customer's order",
        {
            "order_id": _id("Unique per order."),
            "customer_id": _id("Who ordered."),
            "sku": _id("The product ordered."),
            "quantity": {"type": "integer", "minimum": 1, "maximum": events.MAX_QUANTITY},
            "unit_price": _price(),
            "ts": _event_time(),
        },
        ["order_id", "customer_id", "sku", "quantity", "unit_price", "ts"],
    )


def stock_schema() -> dict[str, Any]:
    into_stock = [r for r in events.REASONS if r != "adjustment"]
    schema = _input(
        "stock: goods moving in or out of stock",
        {
            "event_id": _id("Unique per stock event."),
            "sku": _id("The product moved."),
            "reason": {"enum": list(events.REASONS)},
            "quantity": {
                "type": "integer",
                "minimum": -events.MAX_QUANTITY,
                "maximum": events.MAX_QUANTITY,
                "not": {"const": 0},
                "description": "Units added to the level; > 0 for "
                + " and ".join(into_stock)
                + ".",
            },
            "supplier_id": {
                "type": ["string", "null"],
                "maxLength": events.MAX_ID_CHARS,
                "description": "Who delivered (optional; free text, may be empty).",
            },
            "ts": _event_time(),
        },
        ["event_id", "sku", "reason", "quantity", "ts"],
    )
    schema["if"] = {"properties": {"reason": {"enum": into_stock}}, "required": ["reason"]}
    schema["then"] = {"properties": {"quantity": {"minimum": 1}}}
    return schema


# --- outputs --------------------------------------------------------------------------

_STR: Final = {"type": "string"}
_TIME: Final = {"type": "string", "format": "date-time", "pattern": "Z$"}
_INT: Final = {"type": "integer"}
_COUNT: Final = {"type": "integer", "minimum": 0}
_SOURCE: Final = {
    "type": "object",
    "required": ["topic", "partition", "offset"],
    "properties": {"topic": _STR, "partition": _COUNT, "offset": _COUNT},
    "additionalProperties": False,
}

OUTPUT_FIELDS: Final[dict[str, tuple[str, dict[str, dict[str, Any]]]]] = {
    "order-status": (
        "one per processed order (key: order_id)",
        {
            "order_id": _STR,
            "sku": _STR,
            "customer_id": _STR,
            "quantity": {"type": "integer", "minimum": 1},
            "status": {"enum": ["allocated", "backordered"]},
            "backordered_units": _COUNT,
            "level_before": _INT,
            "level_after": _INT,
            "ts": _TIME,
            "as_of": _SOURCE,
        },
    ),
    "stock-levels": (
        "one per level change (key: sku; compacted)",
        {"sku": _STR, "level": _INT, "ts": _TIME},
    ),
    "supplier-orders": (
        "one per supplier order state change (key: sku)",
        {
            "supplier_order_id": _STR,
            "sku": _STR,
            "quantity": {"type": "integer", "minimum": 1},
            "delivered": _COUNT,
            "status": {"enum": ["open", "partially_fulfilled", "completed"]},
            "created_at": _TIME,
            "ts": _TIME,
        },
    ),
    "expedites": (
        "one per (sku, hopping window) over the threshold (key: sku)",
        {
            "sku": _STR,
            "window_start": _TIME,
            "window_end": _TIME,
            "orders": {"type": "integer", "minimum": 1},
            "supplier_order_id": {"type": ["string", "null"]},
            "threshold": _COUNT,
        },
    ),
    "window-results": (
        "one per closed window (key: sku)",
        {
            "sku": _STR,
            "kind": {"enum": ["tumbling", "hopping"]},
            "window_start": _TIME,
            "window_end": _TIME,
            "orders": _COUNT,
            "units": _COUNT,
            "revenue": {"type": "number", "minimum": 0},
        },
    ),
    "dead-letters": (
        "one per rejected input message (no key)",
        {
            "source_topic": _STR,
            "partition": _COUNT,
            "offset": _COUNT,
            "key": {"type": ["string", "null"]},
            "key_bytes": _COUNT,
            "value": {"type": ["string", "null"]},
            "value_bytes": _COUNT,
            "error": _STR,
        },
    ),
}
"""Output topic -> (what one message is, its fields). Every field is always written."""


def _output(topic: str) -> dict[str, Any]:
    what, fields = OUTPUT_FIELDS[topic]
    return {
        "title": f"{topic}: {what}",
        "description": "Written by the worker; consumers should ignore fields they do not "
        "know (the contract may add fields).",
        "type": "object",
        "required": list(fields),
        "properties": fields,
    }


INPUT_TOPICS: Final = ("orders", "stock")
OUTPUT_TOPICS: Final = tuple(OUTPUT_FIELDS)


def schema(topic: str) -> dict[str, Any]:
    """The JSON Schema of the values of ``topic`` (a contract topic name); KeyError if none."""
    if topic == "orders":
        body = orders_schema()
    elif topic == "stock":
        body = stock_schema()
    else:
        body = _output(topic)
    return {"$schema": DIALECT, "$id": ID_BASE + topic, **body}


def all_schemas() -> dict[str, dict[str, Any]]:
    """Topic -> schema, inputs first."""
    return {topic: schema(topic) for topic in (*INPUT_TOPICS, *OUTPUT_TOPICS)}
