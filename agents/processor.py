"""Applying released events to a partition's state: one :class:`BatchProcessor` per batch.

It reads the state of the SKUs a batch touches once, applies each event with the pure
rules (duplicates, stock levels, supplier orders, windows, expedites), and stages each
changed key once plus every output message in a :class:`~app.engine.transaction.Batch`,
which agents/tracker.py commits.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from math import floor
from typing import Any

import orjson

from agents.partition_runtime import (
    CLOSED,
    RECENT,
    SPECS,
    PartitionRuntime,
    dumps,
    load_sku,
    partition_state_key,
    sku_key,
    source_name,
    supplier_order_doc,
    window_keys_from,
)
from app.domain.events import format_ts
from app.domain.models import Order, SkuState, StockMove, SupplierOrder
from app.domain.rules import merge as m
from app.domain.rules import windows as w
from app.domain.rules.stock import apply_order, apply_stock
from app.engine import topics
from app.engine.instance import settings
from app.engine.stores import get, local_range
from app.engine.transaction import Batch
from tables import order_status, partition_state, seen_ids, sku_state, supplier_orders, windows
from tables.base import TimeIndex
from tables.order_status import EXPIRY_INDEX as STATUS_INDEX
from tables.order_status import ts_of as status_ts_of
from tables.seen_ids import EXPIRY_INDEX, seen_key
from tables.seen_ids import ts_of as seen_ts_of


class BatchProcessor:
    """Applies one envelope of events for one partition, staging everything in a Batch."""

    def __init__(self, rt: PartitionRuntime, batch: Batch):
        self.rt = rt
        self.batch = batch
        self.src_topic = ""
        self.src_partition = 0
        self.partition = rt.partition
        self.states: dict[str, tuple[SkuState, dict[str, Any] | None]] = {}
        self.dirty: set[str] = set()
        self.new_ids: dict[bytes, float] = {}
        """seen-ids key -> ts, of the ids first seen in this batch (not yet in the store)."""
        self.windows_dirty: set[w.WindowKey] = set()
        self.t_order_status = topics.order_status.get_topic_name()
        self.t_levels = topics.stock_levels.get_topic_name()
        self.t_supplier = topics.supplier_orders.get_topic_name()
        self.t_expedites = topics.expedites.get_topic_name()
        self.t_results = topics.window_results.get_topic_name()
        self.orders_topic = topics.orders.get_topic_name()
        self.stock_topic = topics.stock.get_topic_name()
        self._ts: float | None = None
        self._ts_text = ""

    # -- helpers ---------------------------------------------------------------
    def fmt(self, ts: float) -> str:
        """``format_ts``, remembering the last one (an event formats its ts thrice)."""
        if ts != self._ts:
            self._ts_text = format_ts(ts)
            self._ts = ts
        return self._ts_text

    def state(self, sku: str) -> SkuState:
        entry = self.states.get(sku)
        if entry is None:
            entry = self.states[sku] = load_sku(sku, self.partition)
        return entry[0]

    def set_state(self, sku: str, state: SkuState, offset: int) -> None:
        as_of = {
            "ts": self.fmt(state.updated_ts),
            "topic": self.src_topic,
            "partition": self.src_partition,
            "offset": offset,
        }
        self.states[sku] = (state, as_of)
        self.dirty.add(sku)

    def is_new(self, kind: str, sku: str, event_id: str, ts: float, offset: int) -> bool:
        """Remember the id; False for a duplicate (counted).

        A duplicate is an id seen for the SKU within DEDUPE_SECONDS of stream time, to the
        second, whenever its entry actually leaves the table (at the end of a batch).
        """
        rt = self.rt
        key = seen_key(kind, sku, event_id)
        seen_ts = self.new_ids.get(key)
        if seen_ts is None:
            raw = get(seen_ids, key, self.partition)
            if raw is not None:
                seen_ts = orjson.loads(raw)[0]
        if seen_ts is not None:
            assert rt.stream_time is not None  # advanced by this event already
            if seen_ts >= rt.stream_time - settings.dedupe_seconds:
                rt.counters["duplicates"] += 1
                return False
            self.batch.put(seen_ids, EXPIRY_INDEX.key(seen_ts, key), None)  # expired: renewed
        entry = [ts, self.src_topic, self.src_partition, offset]
        self.new_ids[key] = ts
        # Its index key comes with it (tables/seen_ids.py).
        self.batch.put(seen_ids, key, dumps(entry))
        return True

    def close_windows(self, pw: w.PartitionWindows) -> None:
        """Emit the windows the stream time closed, and write every changed window."""
        rt = self.rt
        retention_s = settings.closed_window_retention_seconds
        closed_time = pw.stream_time
        for cw in pw.close_due():
            doc = {
                "sku": cw.sku,
                "kind": cw.kind,
                "window_start": format_ts(cw.window_start),
                "window_end": format_ts(cw.window_end),
                "orders": cw.agg.orders,
                "units": cw.agg.units,
                "revenue": w.revenue_out(cw.agg.revenue),
            }
            self.batch.emit(self.t_results, sku_key(cw.sku), dumps(doc))
            rt.recent_results = [doc, *rt.recent_results][:RECENT]
            key = w.window_key_str(cw.key).encode()
            self.windows_dirty.discard(cw.key)
            if closed_time is not None and cw.window_end + retention_s <= closed_time:
                self.batch.put(windows, key, None)  # closed past its retention at once
                continue
            stored = {**w.agg_to_json(cw.agg), "closed": True, "window_end": cw.window_end}
            self.batch.put(windows, key, dumps(stored))
        for wkey in self.windows_dirty:
            agg = pw.get(wkey)
            if agg is None:  # pragma: no cover - closed above in the same batch
                continue
            stored = {**w.agg_to_json(agg), "closed": False, "expedited": wkey in pw.expedited}
            self.batch.put(windows, w.window_key_str(wkey).encode(), dumps(stored))

    def purge_closed(self, closed_time: float) -> None:
        """Delete the closed windows whose retention is over at ``closed_time``.

        Keys of one kind sort by window start, and a window's retention ends at
        ``start + size + CLOSED_WINDOW_RETENTION_SECONDS``: the due ones are a key range,
        read from where the last purge stopped (``purge_from``), so nothing about closed
        windows is kept in memory or read when a partition is set up. A window in that
        range still open (a retention shorter than the grace) holds the cursor back.
        """
        rt = self.rt
        retention_s = settings.closed_window_retention_seconds
        staged = self.batch.table_writes
        for spec in SPECS:
            cut = floor(closed_time - spec.size_s - retention_s) + 1  # starts before: due
            lo = rt.purge_from.get(spec.kind, 0)
            if cut <= lo:
                continue
            held = cut
            start, stop = window_keys_from(spec.kind, lo), window_keys_from(spec.kind, cut)
            for key, stored in local_range(windows, self.partition, start, stop):
                value = staged.get((windows, key), stored)  # this batch's word wins
                if value is None:
                    continue
                if CLOSED not in value:
                    held = min(held, w.parse_window_key(key.decode())[2])
                    continue
                self.batch.put(windows, key, None)
            rt.purge_from[spec.kind] = held

    def expire(
        self, table: Any, index: TimeIndex, ts_of: Callable[[bytes], float], horizon: float
    ) -> None:
        """Delete the records of ``table`` whose time (``ts_of`` their value) is before
        ``horizon``, found by their index keys: the ids seen before the dedupe horizon,
        the statuses past ORDER_STATUS_RETENTION_SECONDS.

        An index key can be stale (tables/seen_ids.py, tables/order_status.py): its record
        was renewed since, with a later time (maybe in this batch, so the staged value
        is read first), or is gone. Only a record whose own time is before the horizon
        leaves; every index key before it does.
        """
        staged = self.batch.table_writes
        for index_key, _ in local_range(table, self.partition, index.prefix, index.bound(horizon)):
            self.batch.put(table, index_key, None)
            _, key = index.entry(index_key)
            found = (table, key) in staged
            raw = staged[table, key] if found else get(table, key, self.partition)
            if raw is not None and ts_of(raw) < horizon:
                self.batch.put(table, key, None)

    def replayed(self, offset: int) -> bool:
        """Whether this input message was applied here before.

        Ingest forwards each input partition in offset order, so per input partition
        the offsets reaching this partition only grow; anything at or below the
        watermark is the same message delivered again (Faust re-delivers after a
        rebalance), and applying it twice would count it twice.
        """
        source = f"{self.src_topic}/{self.src_partition}"
        if offset <= self.rt.watermarks.get(source, -1):
            self.rt.counters["replayed"] += 1
            return True
        self.rt.watermarks[source] = offset
        return False

    def advance(self, ts: float) -> None:
        if self.rt.stream_time is None or ts > self.rt.stream_time:
            self.rt.stream_time = ts

    def emit_supplier_orders(self, changes: list[SupplierOrder]) -> None:
        for so in changes:
            doc = dumps(supplier_order_doc(so))
            self.batch.emit(self.t_supplier, sku_key(so.sku), doc)
            self.batch.put(supplier_orders, so.supplier_order_id.encode(), doc)

    def emit_level(self, sku: str, state: SkuState) -> None:
        doc = {"sku": sku, "level": state.level, "ts": self.fmt(state.updated_ts)}
        self.batch.emit(self.t_levels, sku_key(sku), dumps(doc))

    # -- events ----------------------------------------------------------------
    def order(self, row: list[Any]) -> None:
        _, offset, order_id, customer_id, sku, quantity, price, ts = row
        if self.replayed(offset):
            return
        self.advance(ts)
        if not self.is_new("o", sku, order_id, ts, offset):
            return
        self.rt.counters["orders"] += 1
        order = Order(order_id, customer_id, sku, quantity, Decimal(price), ts)
        state, status, changes = apply_order(
            self.state(sku),
            order,
            reorder_point=settings.reorder_point,
            reorder_target=settings.reorder_target,
        )
        self.set_state(sku, state, offset)
        record = {
            "order_id": order_id,
            "sku": sku,
            "customer_id": customer_id,
            "quantity": quantity,
            "status": status.status,
            "backordered_units": status.backordered_units,
            "level_before": status.level_before,
            "level_after": status.level_after,
            "ts": self.fmt(ts),
            "as_of": {"topic": self.src_topic, "partition": self.src_partition, "offset": offset},
        }
        doc = dumps(record)
        self.batch.emit(self.t_order_status, order_id.encode(), doc)
        self.batch.put(order_status, order_id.encode(), doc)
        self.emit_level(sku, state)
        self.emit_supplier_orders(changes)
        self.order_windows(sku, ts, quantity, order.unit_price, state)

    def stock(self, row: list[Any]) -> None:
        _, offset, event_id, sku, reason, quantity, supplier_id, ts = row
        if self.replayed(offset):
            return
        self.advance(ts)
        if not self.is_new("s", sku, event_id, ts, offset):
            return
        self.rt.counters["stock_moves"] += 1
        move = StockMove(event_id, sku, reason, quantity, supplier_id, ts)
        state, changes = apply_stock(
            self.state(sku),
            move,
            reorder_point=settings.reorder_point,
            reorder_target=settings.reorder_target,
        )
        self.set_state(sku, state, offset)
        self.emit_level(sku, state)
        self.emit_supplier_orders(changes)

    def order_windows(
        self, sku: str, ts: float, quantity: int, price: Decimal, state: SkuState
    ) -> None:
        result = self.rt.windows.apply_order(sku, ts, quantity, price)
        if result.late:
            self.rt.counters["late_orders"] += 1
        self.windows_dirty.update(result.changed)
        open_so = state.open_order.supplier_order_id if state.open_order else None
        for ex in result.expedites:
            doc = {
                "sku": ex.sku,
                "window_start": format_ts(ex.window_start),
                "window_end": format_ts(ex.window_end),
                "orders": ex.orders,
                "supplier_order_id": open_so,
                "threshold": settings.expedite_threshold,
            }
            self.batch.emit(self.t_expedites, sku_key(sku), dumps(doc))
            self.rt.counters["expedites"] += 1  # /stats: the recent list is capped
            self.rt.recent_expedites = [doc, *self.rt.recent_expedites][:RECENT]

    # -- end of batch ----------------------------------------------------------
    def finish(self, token: str = "") -> None:
        """Stage the end-of-batch writes: windows closed, ids and statuses expired, every
        changed SKU, and the partition's document, which carries ``token`` (``commit``):
        how a retried commit tells whether this batch landed (agents/tracker.py)."""
        rt = self.rt
        pw = rt.loaded_windows  # None: no order reached this partition since its rebuild
        if pw is not None:
            self.close_windows(pw)
        record = rt.windows_record()
        order_time: float | None = record.get("order_stream_time")
        stream_time = rt.stream_time
        if stream_time is not None:
            self.purge_closed(order_time if order_time is not None else stream_time)
            self.expire(seen_ids, EXPIRY_INDEX, seen_ts_of, stream_time - settings.dedupe_seconds)
            if settings.order_status_retention_seconds > 0:
                horizon = stream_time - settings.order_status_retention_seconds
                self.expire(order_status, STATUS_INDEX, status_ts_of, horizon)
        for sku in self.dirty:
            state, as_of = self.states[sku]
            doc = state.to_dict()
            doc["as_of"] = as_of
            self.batch.put(sku_state, sku_key(sku), dumps(doc))
        meta = {
            "commit": token,
            "stream_time": stream_time,
            **record,
            "purge_from": rt.purge_from,
            "counters": rt.counters,
            "watermarks": rt.watermarks,
            "sources": {
                source_name(s): [None if p.mts == m.NEVER else p.mts, p.next_offset]
                for s, p in rt.merge.progress.items()
            },
            "resume": {
                source_name(s): [None if mts == m.NEVER else mts, offset]
                for s, (offset, mts) in rt.merge.resume_points().items()
            },
            "recent_expedites": rt.recent_expedites,
            "recent_results": rt.recent_results,
        }
        self.batch.put(partition_state, partition_state_key(self.partition), dumps(meta))
