"""The compact event row both joins carry, and what both say of a rejected message.

One input message is parsed once (app/domain/events.py) into a row: kind (``o`` order,
``s`` stock move), input offset, the event's fields, ``ts``. The repartitioned join
(agents/ingest.py) sends rows in envelopes; the direct join (agents/direct.py) puts
them straight into the tracker's merge. Either way agents/tracker.py applies them.
"""

from __future__ import annotations

from typing import Any

from app.domain.events import DEFAULT_MAX_FUTURE_S, parse_order, parse_stock
from app.domain.rules import dead_letters, merge
from app.engine.instance import app

ORDER = "o"
STOCK = "s"


def envelope_row(
    is_order: bool,
    offset: int,
    raw: bytes | None,
    now: float | None = None,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
) -> tuple[str, list[Any]]:
    """Parse one input message (an order, else a stock move) into (sku, compact row).

    ``now``: the worker's clock, for the bound on ``ts`` (app/domain/events.py). Raises
    InvalidEvent.
    """
    if is_order:
        o = parse_order(raw, now, max_future_s)
        return o.sku, [
            ORDER,
            offset,
            o.order_id,
            o.customer_id,
            o.sku,
            o.quantity,
            str(o.unit_price),
            o.ts,
        ]
    s = parse_stock(raw, now, max_future_s)
    return s.sku, [STOCK, offset, s.event_id, s.sku, s.reason, s.quantity, s.supplier_id, s.ts]


def dead_letter(message: Any, error: str) -> bytes:
    """The ``dead-letters`` value for a rejected message (a record or a Faust message),
    bounded in size (app/domain/rules/dead_letters.py)."""
    return dead_letters.dead_letter(
        message.topic, message.partition, message.offset, message.key, message.value, error
    )


def mts_metadata(mts: float) -> str:
    """The committed offset's metadata: the source's largest ``ts`` so far."""
    return "" if mts == merge.NEVER else repr(mts)


def mts_from_metadata(metadata: str | None) -> float:
    try:
        return float(metadata) if metadata else merge.NEVER
    except ValueError:
        return merge.NEVER  # metadata of another tool: start over, as a fresh source


def unforeseen(record: Any, exc: Exception) -> str:
    """The dead letter's reason for a message the parser failed on without InvalidEvent
    (a bug, not the producer's fault; logged). Still only this message is rejected: the
    contract's "no input stops the worker"."""
    app.log.warning(
        "Dead-lettered %s[%s]@%s: unexpected %r while parsing",
        record.topic,
        record.partition,
        record.offset,
        exc,
    )
    return f"could not be processed: {type(exc).__name__}: {exc}"
