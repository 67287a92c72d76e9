"""The expected results of a stream: what a worker that read it on fresh topics must end
up with (levels, statuses, supplier orders, windows, counts).

The arithmetic is the app's own (:mod:`app.domain.rules.stock`,
:mod:`app.domain.rules.windows`, the join's merge order of :mod:`app.domain.rules.merge`),
so this is a tool for demos and smoke checks, not an independent test oracle (the
tests have their own, tests/integration/oracle.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2

from app.domain.events import format_ts
from app.domain.models import INITIAL, Order, SkuState, StockMove, SupplierOrder
from app.domain.rules import merge
from app.domain.rules import windows as w
from app.domain.rules.stock import apply_order, apply_stock
from app.domain.settings import Settings
from app.tools import scenarios as sc
from app.tools.streams import StreamArgs

# --- expect: the expected results ---------------------------------------------------


def sku_partition(sku: str, partitions: int) -> int:
    """Partition of ``sku`` in the app's SKU-keyed stream (as agents/ingest.py)."""
    hashed: int = murmur2(sku.encode())
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class SkuResult:
    """What one SKU must end up with."""

    state: SkuState = INITIAL
    orders: int = 0
    stock_moves: int = 0
    backordered_orders: int = 0
    backordered_units: int = 0
    supplier_orders: dict[str, SupplierOrder] = field(default_factory=dict)
    "Latest state of each supplier order, in the order they were opened."


@dataclass(slots=True)
class Expected:
    """The results a worker must reach after reading the stream on fresh topics."""

    conf: Settings
    windows_known: bool
    "False in live time: the ts are only known when produced."
    events: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    duplicates: int = 0
    processed_orders: int = 0
    processed_stock_moves: int = 0
    late: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    skus: dict[str, SkuResult] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    "order_id -> the fields of its order-status record that are checked."
    closed: list[w.ClosedWindow] = field(default_factory=list)
    closed_by_sku: dict[tuple[str, str], list[w.ClosedWindow]] = field(default_factory=dict)
    "(sku, kind) -> its closed windows, in closing order."
    expedites: list[dict[str, Any]] = field(default_factory=list)
    partitions: dict[int, w.PartitionWindows] = field(default_factory=dict)
    seen: dict[tuple[str, str, str], float] = field(default_factory=dict)
    stream_time: dict[int, float] = field(default_factory=dict)

    def sku(self, sku: str) -> SkuResult:
        result = self.skus.get(sku)
        if result is None:
            result = self.skus[sku] = SkuResult()
        return result

    def windows_of(self, partition: int) -> w.PartitionWindows:
        pw = self.partitions.get(partition)
        if pw is None:
            specs = (
                w.tumbling(self.conf.tumbling_seconds),
                w.hopping(self.conf.hopping_seconds, self.conf.hopping_step_seconds),
            )
            pw = w.PartitionWindows(
                specs, self.conf.window_grace_seconds, self.conf.expedite_threshold
            )
            self.partitions[partition] = pw
        return pw


def compute_expected(events: Iterable[sc.Event], conf: Settings, *, live: bool) -> Expected:
    """Apply the stream with the app's rules, in the contract's merge order.

    The events are taken as produced by ``inject``: keyed by SKU, so each lands in the
    input partition Kafka's default partitioner picks for its key, in production order
    there; the valid ones are then applied sorted by merge key (app/domain/rules/merge.py).
    The duplicate memory is modelled per partition with the app's 24-hour horizon;
    where the app forgets ids at the end of a batch, this forgets them on lookup, so
    the two agree except for a duplicate arriving within one batch of the horizon.
    """
    exp = Expected(conf, windows_known=not live)
    valid: list[tuple[tuple[int, int], float, tuple[str, Order | StockMove]]] = []
    for event in events:
        exp.events += 1
        exp.per_topic[event.topic] += 1
        parsed = sc.parse_event(event)
        if parsed is None:
            exp.dead_lettered += 1
            continue
        code = merge.ORDERS if event.topic == "orders" else merge.STOCK
        partition = sku_partition(event.key, conf.topic_partitions) if event.key else 0
        valid.append(((code, partition), parsed.ts, (event.topic, parsed)))
    for n, (topic, parsed) in enumerate(merge.contract_order(valid), start=1):
        exp.first_ts = parsed.ts if exp.first_ts is None else exp.first_ts
        exp.last_ts = parsed.ts if exp.last_ts is None else max(exp.last_ts, parsed.ts)
        if not _is_new(exp, topic, parsed):
            exp.duplicates += 1
            continue
        if isinstance(parsed, Order):
            _expect_order(exp, parsed)
        else:
            _expect_move(exp, parsed)
        if n % 5000 == 0:
            _close_windows(exp)
    _close_windows(exp)
    return exp


def _is_new(exp: Expected, topic: str, parsed: Order | StockMove) -> bool:
    ident = parsed.order_id if isinstance(parsed, Order) else parsed.event_id
    sku, ts = parsed.sku, parsed.ts
    partition = sku_partition(sku, exp.conf.topic_partitions)
    before = exp.stream_time.get(partition, -math.inf)
    exp.stream_time[partition] = max(before, ts)
    key = (topic, sku, ident)
    seen = exp.seen.get(key)
    if seen is not None and seen >= before - exp.conf.dedupe_seconds:
        return False
    exp.seen[key] = ts
    return True


def _expect_order(exp: Expected, order: Order) -> None:
    conf = exp.conf
    result = exp.sku(order.sku)
    state, status, changes = apply_order(
        result.state,
        order,
        reorder_point=conf.reorder_point,
        reorder_target=conf.reorder_target,
    )
    result.state = state
    result.orders += 1
    exp.processed_orders += 1
    if status.status == "backordered":
        result.backordered_orders += 1
        result.backordered_units += status.backordered_units
    exp.statuses[order.order_id] = {
        "sku": order.sku,
        "quantity": order.quantity,
        "status": status.status,
        "backordered_units": status.backordered_units,
        "level_after": status.level_after,
    }
    for so in changes:
        result.supplier_orders[so.supplier_order_id] = so
    if not exp.windows_known:
        return
    pw = exp.windows_of(sku_partition(order.sku, conf.topic_partitions))
    outcome = pw.apply_order(order.sku, order.ts, order.quantity, order.unit_price)
    if outcome.late:
        exp.late += 1
    open_so = state.open_order.supplier_order_id if state.open_order else None
    for ex in outcome.expedites:
        exp.expedites.append(
            {
                "sku": ex.sku,
                "window_start": format_ts(ex.window_start),
                "window_end": format_ts(ex.window_end),
                "orders": ex.orders,
                "supplier_order_id": open_so,
            }
        )


def _expect_move(exp: Expected, move: StockMove) -> None:
    result = exp.sku(move.sku)
    state, changes = apply_stock(
        result.state,
        move,
        reorder_point=exp.conf.reorder_point,
        reorder_target=exp.conf.reorder_target,
    )
    result.state = state
    result.stock_moves += 1
    exp.processed_stock_moves += 1
    for so in changes:
        result.supplier_orders[so.supplier_order_id] = so


def _close_windows(exp: Expected) -> None:
    for pw in exp.partitions.values():
        for closed in pw.close_due():
            exp.closed.append(closed)
            exp.closed_by_sku.setdefault((closed.sku, closed.kind), []).append(closed)


def held_windows(exp: Expected, sku: str, kind: w.WindowKind) -> list[list[Any]]:
    """The windows ``GET /windows/{sku}?kind=`` must list: open ones, and closed ones
    still within CLOSED_WINDOW_RETENTION_SECONDS of the partition's stream time."""
    pw = exp.windows_of(sku_partition(sku, exp.conf.topic_partitions))
    spec = pw.spec(kind)
    assert spec is not None
    rows = [
        (start, end, agg, False)
        for start, end, agg in pw.windows_for(sku, kind)  # open (not yet closed)
    ]
    stream_time = pw.stream_time
    keep_after = -math.inf if stream_time is None else stream_time
    for c in exp.closed_by_sku.get((sku, kind), []):
        if c.window_end + exp.conf.closed_window_retention_seconds > keep_after:
            rows.append((c.window_start, c.window_end, c.agg, True))
    rows.sort(key=lambda r: r[0])
    return [
        [format_ts(s), format_ts(e), a.orders, a.units, w.revenue_out(a.revenue), closed]
        for s, e, a, closed in rows
    ]


SO_FIELDS = ("supplier_order_id", "quantity", "delivered", "status")


def so_row(so: SupplierOrder) -> list[Any]:
    return [so.supplier_order_id, so.quantity, so.delivered, so.status]


def expected_json(exp: Expected) -> dict[str, Any]:
    """Everything ``expect --json`` prints."""
    backordered = sum(r.backordered_orders for r in exp.skus.values())
    units = sum(r.backordered_units for r in exp.skus.values())
    doc: dict[str, Any] = {
        "events": exp.events,
        "topics": dict(exp.per_topic),
        "first_ts": None if exp.first_ts is None else format_ts(exp.first_ts),
        "last_ts": None if exp.last_ts is None else format_ts(exp.last_ts),
        "stats": expected_stats(exp),
        "backordered": {"orders": backordered, "units": units},
        "skus": {
            sku: {
                "level": r.state.level,
                "orders": r.orders,
                "stock_moves": r.stock_moves,
                "backordered_orders": r.backordered_orders,
                "backordered_units": r.backordered_units,
                "open_supplier_order": (
                    None if r.state.open_order is None else r.state.open_order.supplier_order_id
                ),
                "supplier_orders": [
                    dict(zip(SO_FIELDS, so_row(so), strict=True))
                    for so in r.supplier_orders.values()
                ],
            }
            for sku, r in sorted(exp.skus.items())
        },
    }
    if exp.windows_known:
        doc["window_results"] = [
            {
                "sku": c.sku,
                "kind": c.kind,
                "window_start": format_ts(c.window_start),
                "window_end": format_ts(c.window_end),
                "orders": c.agg.orders,
                "units": c.agg.units,
                "revenue": w.revenue_out(c.agg.revenue),
            }
            for c in exp.closed
        ]
        doc["expedites"] = exp.expedites
    return doc


def expected_stats(exp: Expected) -> dict[str, int]:
    stats = {
        "processed_orders": exp.processed_orders,
        "processed_stock_moves": exp.processed_stock_moves,
        "dead_lettered": exp.dead_lettered,
        "duplicates": exp.duplicates,
    }
    if exp.windows_known:
        stats["late"] = exp.late
        stats["expedites"] = len(exp.expedites)
    return stats


def expected_summary(exp: Expected, args: StreamArgs, limit: int = 15) -> str:
    """The readable summary ``expect`` prints."""
    sos = [so for r in exp.skus.values() for so in r.supplier_orders.values()]
    status_count = Counter(so.status for so in sos)
    backordered = sum(r.backordered_orders for r in exp.skus.values())
    units = sum(r.backordered_units for r in exp.skus.values())
    span = ""
    if exp.first_ts is not None and exp.last_ts is not None:
        mode = "live: real times differ" if args.live else "sim"
        span = f", event time {format_ts(exp.first_ts)} .. {format_ts(exp.last_ts)} ({mode})"
    lines = [
        f"expect: {args.describe()}: {exp.events} events{span}",
        f"  input         orders {exp.per_topic['orders']}, stock {exp.per_topic['stock']}",
        f"  processed     orders {exp.processed_orders}, stock moves {exp.processed_stock_moves}",
        f"  dead letters  {exp.dead_lettered}",
        f"  duplicates    {exp.duplicates}",
        f"  SKUs          {len(exp.skus)}, total level "
        f"{sum(r.state.level for r in exp.skus.values())}, "
        f"{sum(r.state.level < 0 for r in exp.skus.values())} in backlog",
        f"  backordered   {backordered} orders, {units} units",
        f"  supplier ord. {len(sos)} opened: "
        + ", ".join(f"{n} {s}" for s, n in sorted(status_count.items())),
    ]
    if exp.windows_known:
        kinds = Counter(c.kind for c in exp.closed)
        lines += [
            f"  windows       closed: {kinds['tumbling']} tumbling, {kinds['hopping']} hopping; "
            f"late orders {exp.late}",
            f"  expedites     {len(exp.expedites)}",
        ]
    else:
        lines.append("  windows       not predicted in live time")
    lines.append("")
    lines.append(f"  {'sku':<12}{'level':>8}{'orders':>8}{'backord.':>10}  supplier orders")
    # The most eventful SKUs first: backlog and supplier orders are the story.
    ranked = sorted(
        exp.skus.items(),
        key=lambda kv: (-len(kv[1].supplier_orders), -kv[1].backordered_orders, kv[0]),
    )
    for sku, r in ranked[:limit]:
        so_text = ", ".join(
            f"{so.supplier_order_id} {so.delivered}/{so.quantity} {so.status}"
            for so in r.supplier_orders.values()
        )
        lines.append(
            f"  {sku:<12}{r.state.level:>8}{r.orders:>8}{r.backordered_orders:>10}  "
            f"{so_text or '-'}"
        )
    if len(ranked) > limit:
        lines.append(f"  ... {len(ranked) - limit} more SKUs (--json lists all)")
    return "\n".join(lines)
