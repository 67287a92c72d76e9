"""The stock management and stock tracker rules, as pure functions over one SKU's state.

This module owns the contract's "Semantics" for levels, order statuses and supplier
orders. Each function takes the SKU's :class:`~app.models.SkuState` and one valid,
non-duplicate event, and returns the new state plus what the event caused; the
caller stores the state and publishes the outputs. No I/O and no clock: the same
events in the same order give the same results, which is what makes replays safe.

An event is applied in the contract's order: the level changes, a delivery is
reconciled against the open supplier order, then the reorder rule runs.
"""

from __future__ import annotations

from app.domain.models import Order, OrderStatus, SkuState, StockMove, SupplierOrder


def apply_order(
    state: SkuState, order: Order, *, reorder_point: int, reorder_target: int
) -> tuple[SkuState, OrderStatus, list[SupplierOrder]]:
    """Apply an order: new state, the order's status, and supplier order changes (0 or 1)."""
    before = state.level
    quantity = order.quantity
    after = before - quantity
    if before >= quantity:
        status = OrderStatus(
            order.order_id, order.sku, quantity, "allocated", 0, before, after, order.ts
        )
    else:
        # Only stock on hand can be allocated; a backlog (negative level) covers nothing.
        missing = quantity - before if before > 0 else quantity
        status = OrderStatus(
            order.order_id, order.sku, quantity, "backordered", missing, before, after, order.ts
        )
    changes: list[SupplierOrder] = []
    opened = state.supplier_orders_opened
    open_order = state.open_order
    if after < reorder_point and open_order is None:
        opened += 1
        open_order = _open(order.sku, opened, reorder_target - after, order.ts)
        changes.append(open_order)
    return SkuState(after, order.ts, opened, open_order), status, changes


def apply_stock(
    state: SkuState, move: StockMove, *, reorder_point: int, reorder_target: int
) -> tuple[SkuState, list[SupplierOrder]]:
    """Apply a stock move: new state and supplier order changes, in the order they happened.

    A delivery can both complete the open supplier order and, if the level is still
    below the reorder point, open the next one: then both states are returned.
    """
    level = state.level + move.quantity
    changes: list[SupplierOrder] = []
    opened = state.supplier_orders_opened
    open_order = state.open_order
    if open_order is not None and move.reason == "delivery":
        # Deliveries count in full, also beyond the ordered quantity: the supplier
        # order tracks what arrived, the level already holds every unit.
        delivered = open_order.delivered + move.quantity
        if delivered >= open_order.quantity:
            changes.append(
                open_order._replace(delivered=delivered, status="completed", ts=move.ts)
            )
            open_order = None
        else:
            open_order = open_order._replace(
                delivered=delivered, status="partially_fulfilled", ts=move.ts
            )
            changes.append(open_order)
    if level < reorder_point and open_order is None:
        opened += 1
        open_order = _open(move.sku, opened, reorder_target - level, move.ts)
        changes.append(open_order)
    return SkuState(level, move.ts, opened, open_order), changes


def _open(sku: str, n: int, quantity: int, ts: float) -> SupplierOrder:
    # The id depends only on the SKU and how many orders it had: a replay of the same
    # events opens the same ids, so downstream consumers can deduplicate on them.
    # Settings guarantee REORDER_TARGET > REORDER_POINT > level, so quantity >= 2.
    return SupplierOrder(f"SO-{sku}-{n}", sku, quantity, 0, "open", ts, ts)
