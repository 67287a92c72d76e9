"""The tracker: one place per SKU where orders and stock moves meet (the join), in order.

It consumes the SKU-partitioned envelopes written by agents/ingest.py. Each envelope is
one batch: the agent reads the state of the SKUs it touches once, applies every event
with the pure rules (duplicates, stock levels, supplier orders, windows), then writes
each changed key once, every output message, and the input offset in one Kafka
transaction (app/transaction.py).

The envelopes do not go through a Faust stream: the consumer's batch tap
(app/consumer.py) hands each fetch of them to :func:`tracker` as raw records per
partition, which queues it for the tracker's own task. Faust would only add its
per-message cost and an ack/gap bookkeeping that grows without bound on this
transactional topic (offsets commit in our own transactions, never Faust's). The
partitions of one fetch are independent, so their transactions commit concurrently.

Per partition it also keeps in memory what the rules need between batches: the duplicate
memory's expiry heap and the open windows. Both are rebuilt from the tables the first
time a partition is processed after it is assigned, so a restart or rebalance resumes
exactly where the last committed batch left off.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from faust.types import TP

from app import topics
from app.consumer import Records, tap
from app.events import format_ts
from app.main import app, settings
from app.models import INITIAL, Order, SkuState, StockMove, SupplierOrder
from app.rules import windows as w
from app.rules.stock import apply_order, apply_stock
from app.transaction import Batch, CommitAbandoned, commit
from tables import order_status, partition_state, seen_ids, sku_state, supplier_orders, windows
from tables.base import get, items
from tables.restore import Restorer

SPECS = (
    w.tumbling(settings.tumbling_seconds),
    w.hopping(settings.hopping_seconds, settings.hopping_step_seconds),
)
COUNTERS = ("orders", "stock_moves", "duplicates", "late_orders", "replayed")
RECENT = 20
"""How many recent expedites and window results each partition keeps for the dashboard."""


@dataclass(slots=True)
class PartitionRuntime:
    """In-memory state of one partition of the SKU-keyed stream (rebuilt from tables)."""

    partition: int
    stream_time: float | None = None
    """Largest event ts (orders and stock) seen; drives duplicate-memory expiry."""
    seen: dict[bytes, list[Any]] = field(default_factory=dict)
    """seen-ids key -> [ts, source topic, partition, offset]."""
    expiry: list[tuple[float, bytes]] = field(default_factory=list)
    """Heap of (ts, seen key) for expiring the duplicate memory by stream time."""
    closed: list[tuple[float, bytes]] = field(default_factory=list)
    """Heap of (delete at stream time, windows key) of closed windows kept for HTTP."""
    windows: w.PartitionWindows = field(
        default_factory=lambda: w.PartitionWindows(
            SPECS, settings.window_grace_seconds, settings.expedite_threshold
        )
    )
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    watermarks: dict[str, int] = field(default_factory=dict)
    """Highest offset applied per input partition ("topic/partition")."""
    recent_expedites: list[dict[str, Any]] = field(default_factory=list)
    recent_results: list[dict[str, Any]] = field(default_factory=list)


_runtimes: dict[int, PartitionRuntime] = {}


TABLES = (sku_state, supplier_orders, order_status, seen_ids, windows, partition_state)


def _rebuilt(partition: int) -> None:
    _runtimes[partition] = rebuild(partition)


restorer = Restorer(
    topics.events_by_sku.get_topic_name(), TABLES, settings.broker_host_ports, _rebuilt
)
"""Restores this agent's partitions on assignment, and rebuilds their runtimes."""


async def runtime_for(partition: int) -> PartitionRuntime:
    """The partition's runtime; restores its tables and rebuilds it if needed."""
    while (rt := _runtimes.get(partition)) is None:
        await restorer.ensure(partition)
    return rt


def partition_state_key(partition: int) -> bytes:
    return b"p%d" % partition


def rebuild(partition: int) -> PartitionRuntime:
    rt = PartitionRuntime(partition)
    raw_meta = get(partition_state, partition_state_key(partition), partition)
    meta = orjson.loads(raw_meta) if raw_meta else {}
    rt.stream_time = meta.get("stream_time")
    rt.counters.update(meta.get("counters", {}))
    rt.watermarks = meta.get("watermarks", {})
    rt.recent_expedites = meta.get("recent_expedites", [])
    rt.recent_results = meta.get("recent_results", [])
    for key, value in items(seen_ids, partition):
        entry = orjson.loads(value)
        rt.seen[key] = entry
        rt.expiry.append((entry[0], key))
    heapq.heapify(rt.expiry)
    open_aggs: list[tuple[w.WindowKey, w.WindowAgg]] = []
    expedited: list[w.WindowKey] = []
    for key, value in items(windows, partition):
        doc = orjson.loads(value)
        wkey = w.parse_window_key(key.decode())
        if doc.get("closed"):
            rt.closed.append((doc["window_end"] + settings.closed_window_retention_seconds, key))
            continue
        open_aggs.append((wkey, w.agg_from_json(doc)))
        if doc.get("expedited"):
            expedited.append(wkey)
    heapq.heapify(rt.closed)
    rt.windows.restore(open_aggs, meta.get("order_stream_time"), expedited)
    return rt


def forget_partitions(partitions: set[int]) -> None:
    restorer.forget(partitions)
    for p in partitions:
        _runtimes.pop(p, None)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    # Another worker may process these partitions next; our in-memory view would be stale
    # if they come back, so drop it and rebuild from the tables when they do.
    forget_partitions({tp.partition for tp in revoked if tp.topic == restorer.topic})


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    # Restore now, not at the first batch: a partition that gets no new input must
    # still be served (and counted in /stats) right after a restart or a takeover.
    restorer.prefetch(tp.partition for tp in assigned if tp.topic == restorer.topic)


def dumps(obj: Any) -> bytes:
    """``orjson.dumps``, in a bytes object of its own size.

    orjson returns each document in a 4 kB allocation; a batch stages a few documents
    per event until its commit, so thousands of events held tens of times their size
    (a 10,000-event batch peaked near 1 GB). Copying costs a fraction of a microsecond.
    """
    return memoryview(orjson.dumps(obj)).tobytes()


def sku_key(sku: str) -> bytes:
    return sku.encode()


def load_sku(sku: str, partition: int) -> tuple[SkuState, dict[str, Any] | None]:
    raw = get(sku_state, sku_key(sku), partition)
    if raw is None:
        return INITIAL, None
    doc = orjson.loads(raw)
    return SkuState.from_dict(doc), doc.get("as_of")


def supplier_order_doc(so: SupplierOrder) -> dict[str, Any]:
    return {
        "supplier_order_id": so.supplier_order_id,
        "sku": so.sku,
        "quantity": so.quantity,
        "delivered": so.delivered,
        "status": so.status,
        "created_at": format_ts(so.created_ts),
        "ts": format_ts(so.ts),
    }


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
        self.windows_dirty: set[w.WindowKey] = set()
        self.t_order_status = topics.order_status.get_topic_name()
        self.t_levels = topics.stock_levels.get_topic_name()
        self.t_supplier = topics.supplier_orders.get_topic_name()
        self.t_expedites = topics.expedites.get_topic_name()
        self.t_results = topics.window_results.get_topic_name()
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
        """Remember the id; False for a duplicate (counted)."""
        rt = self.rt
        key = b"%s/%s\x1f%s" % (kind.encode(), sku.encode(), event_id.encode())
        if key in rt.seen:
            rt.counters["duplicates"] += 1
            return False
        entry = [ts, self.src_topic, self.src_partition, offset]
        rt.seen[key] = entry
        heapq.heappush(rt.expiry, (ts, key))
        self.batch.put(seen_ids, key, dumps(entry))
        return True

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
            self.rt.recent_expedites = [doc, *self.rt.recent_expedites][:RECENT]

    # -- end of batch ----------------------------------------------------------
    def finish(self) -> None:
        rt = self.rt
        pw = rt.windows
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
            stored = {
                **w.agg_to_json(cw.agg),
                "closed": True,
                "window_end": cw.window_end,
            }
            self.batch.put(windows, key, dumps(stored))
            self.windows_dirty.discard(cw.key)
            heapq.heappush(
                rt.closed, (cw.window_end + settings.closed_window_retention_seconds, key)
            )
        for wkey in self.windows_dirty:
            agg = pw.get(wkey)
            if agg is None:  # pragma: no cover - closed above in the same batch
                continue
            stored = {**w.agg_to_json(agg), "closed": False, "expedited": wkey in pw.expedited}
            self.batch.put(windows, w.window_key_str(wkey).encode(), dumps(stored))
        order_time = pw.stream_time
        stream_time = rt.stream_time
        if stream_time is not None:
            # Closed windows leave the table once stream time passes their retention.
            closed_time = order_time if order_time is not None else stream_time
            while rt.closed and rt.closed[0][0] <= closed_time:
                _, key = heapq.heappop(rt.closed)
                self.batch.put(windows, key, None)
            horizon = stream_time - settings.dedupe_seconds
            while rt.expiry and rt.expiry[0][0] < horizon:
                _, key = heapq.heappop(rt.expiry)
                if rt.seen.pop(key, None) is not None:
                    self.batch.put(seen_ids, key, None)
        for sku in self.dirty:
            state, as_of = self.states[sku]
            doc = state.to_dict()
            doc["as_of"] = as_of
            self.batch.put(sku_state, sku_key(sku), dumps(doc))
        meta = {
            "stream_time": stream_time,
            "order_stream_time": order_time,
            "counters": rt.counters,
            "watermarks": rt.watermarks,
            "recent_expedites": rt.recent_expedites,
            "recent_results": rt.recent_results,
        }
        self.batch.put(partition_state, partition_state_key(self.partition), dumps(meta))


def apply_envelope(proc: BatchProcessor, value: bytes) -> int:
    """Apply one envelope (see agents/ingest.py): rows in arrival order; return how many."""
    orders_topic, stock_topic = topics.orders.get_topic_name(), topics.stock.get_topic_name()
    rows = orjson.loads(value)
    for row in rows:
        proc.src_partition = row.pop()
        if row[0] == "o":
            proc.src_topic = orders_topic
            proc.order(row)
        else:
            proc.src_topic = stock_topic
            proc.stock(row)
    return len(rows)


def start(rt: PartitionRuntime) -> BatchProcessor:
    """A new batch of the partition."""
    return BatchProcessor(rt, Batch(table_partition=rt.partition))


def apply(proc: BatchProcessor, record: Any) -> int:
    """Apply one envelope record; return how many events it held."""
    try:
        n = apply_envelope(proc, record.value)
    except Exception:
        # Our own envelopes are valid by construction; if one is not, drop the
        # in-memory state (it may be half-applied) and stop rather than guess.
        forget_partitions({proc.partition})
        raise
    proc.batch.consumed(TP(record.topic, record.partition), record.offset)
    return n


def finish(proc: BatchProcessor) -> Batch:
    try:
        proc.finish()
    except Exception:
        forget_partitions({proc.partition})
        raise
    return proc.batch


async def track_partition(tp: TP, records: Sequence[Any], current: Callable[[], bool]) -> None:
    """Apply and commit the envelopes of one partition: one transaction per
    ``BATCH_SIZE`` events or ``BATCH_ENVELOPES`` envelopes, whichever comes first."""
    proc: BatchProcessor | None = None
    events = envelopes = 0
    for record in records:
        if proc is None:
            rt = _runtimes.get(tp.partition)
            if rt is None or not current():
                return  # revoked meanwhile: Faust seeks back to the committed offset
            proc = start(rt)
        events += apply(proc, record)
        envelopes += 1
        if events >= settings.batch_size or envelopes >= settings.batch_envelopes:
            if not await _commit(tp, finish(proc), current):
                return
            proc, events, envelopes = None, 0, 0
    if proc is not None:
        await _commit(tp, finish(proc), current)


async def _commit(tp: TP, batch: Batch, current: Callable[[], bool] | None = None) -> bool:
    """Commit (retried through broker outages); False if given up (a rebalance)."""
    try:
        if not await commit(batch, source=tp, current=current):
            # Committed while a rebalance took the partition (its stores untouched): the
            # runtime must be rebuilt from the changelogs, this batch included.
            forget_partitions({tp.partition})
            return False
    except CommitAbandoned:
        # Not committed, and the partition is no longer ours: its next owner (or this
        # worker, if it comes back) resumes from the committed offsets.
        forget_partitions({tp.partition})
        return False
    except BaseException:
        # The in-memory runtime already holds this batch; Kafka may not.
        forget_partitions({tp.partition})
        raise
    return True


FETCHES_QUEUED = 4
"""Most fetches of envelopes waiting for the tracker (the consumer waits when full)."""

_fetches: asyncio.Queue[tuple[Records, Callable[[], bool]]] = asyncio.Queue(FETCHES_QUEUED)


async def tracker(records: Records, current: Callable[[], bool]) -> None:
    """The tap handler: queue the fetch for :func:`_run_tracker`.

    The tracker does not run in the consumer's fetch loop: applying and committing
    thousands of events (or restoring a partition) would hold back ingest, which then
    reads orders and stock moves produced far apart in one fetch (and loses their
    order across the two topics). One task applies the queued fetches in order; each
    still checks ``current()`` before it applies anything.
    """
    await _fetches.put((records, current))


async def _run_tracker() -> None:
    while True:
        records, current = await _fetches.get()
        try:
            await track(records, current)
        except Exception as exc:
            # What a failed batch applied is unknown: stop the worker; a restart
            # resumes from the offsets committed with the last complete batch.
            await app.crash(exc)
            raise


app.task(_run_tracker)


async def track(records: Records, current: Callable[[], bool]) -> None:
    """events-by-sku -> tables + order-status, stock-levels, supplier-orders, expedites,
    window-results: one fetch at once, the partitions' transactions concurrently."""
    # The first batch after an assignment restores each partition's tables; they are
    # independent, so restore them concurrently.
    await asyncio.gather(*(runtime_for(tp.partition) for tp in records))
    if not current():
        # A rebalance while restoring: these records may belong to another worker now,
        # and a runtime restored across a revocation may miss its writes.
        forget_partitions({tp.partition for tp in records})
        return
    await asyncio.gather(*(track_partition(tp, recs, current) for tp, recs in records.items()))


# Subscribed without a stream: the consumer hands its records to ``tracker``.
app.topics.add(topics.events_by_sku)
tap(topics.events_by_sku.get_topic_name(), tracker)
