"""Typed records of the domain: validated input events, per-SKU state, rule outputs.

This module owns the shapes only. Parsing raw messages lives in :mod:`app.domain.events`,
the rules that turn events into new state live in :mod:`app.domain.rules.stock`, and the
JSON written to output topics is built where it is produced. The one serialisation
kept here is :meth:`SkuState.to_dict` / :meth:`SkuState.from_dict`, because the
state's storage format must round-trip exactly with the state itself.

Times are ``ts`` floats: seconds since the epoch, UTC, event time.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, NamedTuple

StockReason = Literal["delivery", "return", "adjustment"]
SupplierOrderStatus = Literal["open", "partially_fulfilled", "completed"]
OrderStatusValue = Literal["allocated", "backordered"]

# Lookup tables double as validators: a stored string becomes the Literal type
# without a cast, and an unknown value fails loudly with KeyError.
_SO_STATUSES: dict[str, SupplierOrderStatus] = {
    "open": "open",
    "partially_fulfilled": "partially_fulfilled",
    "completed": "completed",
}


class Order(NamedTuple):
    """A valid message of the ``orders`` topic."""

    order_id: str
    "Producer-chosen id, unique per order; 1-64 characters."
    customer_id: str
    "Who ordered; 1-64 characters."
    sku: str
    "The product ordered; 1-64 characters. The key of all per-SKU state."
    quantity: int
    "Units ordered, >= 1."
    unit_price: Decimal
    "Price of one unit, >= 0, exact (``19.99`` is ``Decimal('19.99')``, not a binary float)."
    ts: float
    "Event time, seconds since the epoch (UTC)."


class StockMove(NamedTuple):
    """A valid message of the ``stock`` topic: goods moving in or out of stock."""

    event_id: str
    "Producer-chosen id, unique per stock event; 1-64 characters."
    sku: str
    "The product moved; 1-64 characters."
    reason: StockReason
    "``delivery`` (from a supplier), ``return`` (from a customer) or ``adjustment``."
    quantity: int
    "Units added to the level; never 0, > 0 for deliveries and returns."
    supplier_id: str | None
    "Who delivered, if the producer said so."
    ts: float
    "Event time, seconds since the epoch (UTC)."


class SupplierOrder(NamedTuple):
    """One state of a supplier order raised by the stock tracker (a ``supplier-orders`` value)."""

    supplier_order_id: str
    "``SO-<sku>-<n>``, n = 1, 2, ... per SKU, so a replay gives the same ids."
    sku: str
    "The product reordered."
    quantity: int
    "Units ordered from the supplier (``REORDER_TARGET - level`` when opened)."
    delivered: int
    "Units delivered against this order so far; only ``delivery`` events count."
    status: SupplierOrderStatus
    "``open`` -> ``partially_fulfilled`` -> ``completed`` (when ``delivered >= quantity``)."
    created_ts: float
    "Event time of the event that opened it."
    ts: float
    "Event time of the event that caused this state (the last change)."

    @property
    def is_open(self) -> bool:
        """Whether deliveries still count against it; a SKU has at most one open order."""
        return self.status != "completed"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able storage form (times stay float seconds)."""
        return self._asdict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupplierOrder:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError if malformed."""
        return cls(
            supplier_order_id=str(data["supplier_order_id"]),
            sku=str(data["sku"]),
            quantity=int(data["quantity"]),
            delivered=int(data["delivered"]),
            status=_SO_STATUSES[data["status"]],
            created_ts=float(data["created_ts"]),
            ts=float(data["ts"]),
        )


class SkuState(NamedTuple):
    """Everything the stock rules remember about one SKU (one table row)."""

    level: int
    "Sum of stock quantities minus sum of order quantities; negative is a backlog."
    updated_ts: float
    "Event time of the last applied event; 0.0 before any."
    supplier_orders_opened: int
    "The n of the newest ``SO-<sku>-<n>``; 0 before any. The next one is n + 1."
    open_order: SupplierOrder | None
    "The SKU's open supplier order, if any (completed orders are not kept here)."

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able storage form, e.g. for a table value or a changelog."""
        return {
            "level": self.level,
            "updated_ts": self.updated_ts,
            "supplier_orders_opened": self.supplier_orders_opened,
            "open_order": None if self.open_order is None else self.open_order.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkuState:
        """Inverse of :meth:`to_dict`; raises KeyError, TypeError or ValueError if malformed."""
        open_order = data["open_order"]
        return cls(
            level=int(data["level"]),
            updated_ts=float(data["updated_ts"]),
            supplier_orders_opened=int(data["supplier_orders_opened"]),
            open_order=None if open_order is None else SupplierOrder.from_dict(open_order),
        )


INITIAL = SkuState(level=0, updated_ts=0.0, supplier_orders_opened=0, open_order=None)
"""State of a SKU never seen before."""


class OrderStatus(NamedTuple):
    """What processing did to one order (an ``order-status`` value)."""

    order_id: str
    "The order's id."
    sku: str
    "The order's SKU."
    quantity: int
    "Units ordered."
    status: OrderStatusValue
    "``allocated`` if the level before covered the quantity, else ``backordered``."
    backordered_units: int
    "``quantity - max(level_before, 0)`` when backordered, 0 when allocated."
    level_before: int
    "The SKU's level just before this order."
    level_after: int
    "The SKU's level just after it (``level_before - quantity``)."
    ts: float
    "The order's event time."
