"""The tracker: one place per SKU where orders and stock moves meet (the join), in order.

It consumes the SKU-partitioned envelopes written by agents/ingest.py and puts their
events into the partition's event-time merge (app/rules/merge.py), which releases them
in the contract's order once no input partition can still send an older one. Per batch
of released events it reads the state of the SKUs they touch once, applies each event
with the pure rules (duplicates, stock levels, supplier orders, windows), then writes
each changed key once, every output message, and the input offset (the oldest envelope
still holding a waiting event) in one Kafka transaction (app/transaction.py). An event
whose processing raises is isolated (:func:`isolate`): it becomes a dead letter and the
rest of its batch commits.

The envelopes do not go through a Faust stream: the consumer's batch tap
(app/consumer.py) hands each fetch of them to :func:`tracker` as raw records per
partition, which queues it for the tracker's own task. Faust would only add its
per-message cost and an ack/gap bookkeeping that grows without bound on this
transactional topic (offsets commit in our own transactions, never Faust's). The
partitions of one fetch are independent, so their transactions commit concurrently.

Per partition it keeps in memory what the rules need between batches, bounded by the
SKUs and open windows, not by the orders: the open windows, the merge's waiting events
and progress, counters. The duplicate memory lives in RocksDB (``seen-ids``, with a
local expiry index ordered by ts). All of it is rebuilt from the tables the first time
a partition is processed after it is assigned, so a restart or rebalance resumes
exactly where the last committed batch left off.

With WINDOW_IDLE_CLOSE_SECONDS set, a timer (:func:`idle_tick`) also closes the due
windows of partitions that received no event for that long: it moves their window
stream time on by the wall time elapsed (app/rules/windows.py) and commits the results
and the new stream time like a batch without input. It runs under the same lock as the
batches, so it never interleaves with a batch of the same partition.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from faust.types import TP

from app import metrics, topics, waiters
from app.consumer import Fetch, FetchQueue, Records, tap
from app.events import format_ts
from app.main import app, settings
from app.models import INITIAL, Order, SkuState, StockMove, SupplierOrder
from app.rules import dead_letters
from app.rules import merge as m
from app.rules import windows as w
from app.rules.stock import apply_order, apply_stock
from app.transaction import Batch, CommitAbandoned, can_commit, commit
from tables import order_status, partition_state, seen_ids, sku_state, supplier_orders, windows
from tables.base import LOCAL_PREFIX, get, items, local_range, put_local
from tables.restore import Restorer

SPECS = (
    w.tumbling(settings.tumbling_seconds),
    w.hopping(settings.hopping_seconds, settings.hopping_step_seconds),
)
COUNTERS = (
    "orders",
    "stock_moves",
    "duplicates",
    "late_orders",
    "replayed",
    "failed",
    "expedites",
)
RECENT = 20
"""How many recent expedites and window results each partition keeps for the dashboard."""


@dataclass(slots=True)
class PartitionRuntime:
    """In-memory state of one partition of the SKU-keyed stream (rebuilt from tables)."""

    partition: int
    stream_time: float | None = None
    """Largest event ts (orders and stock) seen; drives duplicate-memory expiry."""
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
    merge: m.Merge[Waiting] = field(default_factory=m.Merge)
    """Events that arrived but may not be applied yet (the join's order)."""
    generation: int = 0
    """The consumer group generation this runtime was built in: a source's "read to its
    end" counts only if said in this generation or later (an older one may be stale)."""
    read_upto: int | None = None
    """Offset after the last envelope fed to ``merge``."""
    idle_since: float = field(default_factory=time.monotonic)
    """Wall clock (monotonic) of the last batch of input, or of the rebuild: idle close
    measures from here, so after a restart the idle clock starts again."""
    idle_base: float | None = None
    """Window stream time right after that batch (taken by the first idle tick after it)."""

    def commit_offset(self) -> int | None:
        """Where this partition's consumer resumes after a restart: the oldest envelope
        holding an event not yet applied (events before it are skipped by ``watermarks``),
        else after the last envelope read."""
        oldest = min((wt.envelope_offset for wt in self.merge.pending()), default=None)
        return oldest if oldest is not None else self.read_upto


@dataclass(slots=True)
class Waiting:
    """An event in the merge: its row (see agents/ingest.py) and the envelope it came in."""

    row: list[Any]
    envelope_offset: int
    arrived: float = 0.0
    """time.monotonic() when the tracker got it (for the merge-wait metric)."""


log = logging.getLogger(__name__)

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


def topic_names() -> dict[int, str]:
    """Merge-key topic code -> input topic name."""
    return {m.ORDERS: topics.orders.get_topic_name(), m.STOCK: topics.stock.get_topic_name()}


def all_sources() -> list[m.Source]:
    """Every input partition the join waits for."""
    return [(m.ORDERS, p) for p in range(topics.partitions_of(topics.orders))] + [
        (m.STOCK, p) for p in range(topics.partitions_of(topics.stock))
    ]


def source_name(source: m.Source) -> str:
    return f"{source[0]}/{source[1]}"


def new_merge(watermarks: dict[str, int], progress: dict[str, list[Any]]) -> m.Merge[Waiting]:
    """A merge that waits for every source, knowing what the last commit knew: how far
    each source got (a lower bound, still true) and what was applied. Whether a source
    is read to its end is never carried over: it may have grown while nobody looked."""
    merge: m.Merge[Waiting] = m.Merge(all_sources())
    codes = {name: code for code, name in topic_names().items()}
    for name, offset in watermarks.items():
        topic, _, partition = name.rpartition("/")
        if topic in codes:
            merge.sent_upto[(codes[topic], int(partition))] = offset
    for name, (mts, next_offset) in progress.items():
        code, _, partition = name.partition("/")
        merge.report(
            (int(code), int(partition)), m.NEVER if mts is None else mts, next_offset, False
        )
    return merge


def rebuild(partition: int) -> PartitionRuntime:
    rt = PartitionRuntime(partition)
    raw_meta = get(partition_state, partition_state_key(partition), partition)
    meta = orjson.loads(raw_meta) if raw_meta else {}
    rt.stream_time = meta.get("stream_time")
    rt.counters.update(meta.get("counters", {}))
    rt.watermarks = meta.get("watermarks", {})
    rt.merge = new_merge(rt.watermarks, meta.get("sources", {}))
    rt.generation = app.consumer_generation_id
    rt.recent_expedites = meta.get("recent_expedites", [])
    rt.recent_results = meta.get("recent_results", [])
    rebuild_expiry_index(partition)
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


def expiry_key(ts: float, key: bytes) -> bytes:
    """The duplicate memory's expiry index: a local key (never in the changelog) per
    remembered id, ordered by its ts (a big-endian double sorts like the positive
    number it holds), so expiring is a range scan in RocksDB, not a heap in memory."""
    return EXPIRY + struct.pack(">d", ts) + key


EXPIRY = LOCAL_PREFIX + b"e"


def rebuild_expiry_index(partition: int) -> None:
    """Make the expiry index match the partition's seen-ids (it is not in the changelog,
    so a restore leaves it stale): one pass over the ids, in RocksDB, nothing kept."""
    stale = [(k, None) for k, _ in local_range(seen_ids, partition, EXPIRY, EXPIRY + b"\xff")]
    writes: list[tuple[bytes, bytes | None]] = list(stale)
    for key, value in items(seen_ids, partition):
        writes.append((expiry_key(orjson.loads(value)[0], key), b""))
        if len(writes) >= 10_000:
            put_local(seen_ids, writes, partition)
            writes = []
    put_local(seen_ids, writes, partition)


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
        key = b"%s/%s\x1f%s" % (kind.encode(), sku.encode(), event_id.encode())
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
            self.batch.put(seen_ids, expiry_key(seen_ts, key), None)  # expired: renewed
        entry = [ts, self.src_topic, self.src_partition, offset]
        self.new_ids[key] = ts
        self.batch.put(seen_ids, key, dumps(entry))
        self.batch.put(seen_ids, expiry_key(ts, key), b"")
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
            self.rt.counters["expedites"] += 1  # /stats: the recent list is capped
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
            stop = EXPIRY + struct.pack(">d", horizon)
            for index_key, _ in local_range(seen_ids, self.partition, EXPIRY, stop):
                key = index_key[len(EXPIRY) + 8 :]
                if key not in self.new_ids:  # a renewed id keeps its new entry
                    self.batch.put(seen_ids, key, None)
                self.batch.put(seen_ids, index_key, None)
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
            "sources": {
                source_name(s): [None if p.mts == m.NEVER else p.mts, p.next_offset]
                for s, p in rt.merge.progress.items()
            },
            "recent_expedites": rt.recent_expedites,
            "recent_results": rt.recent_results,
        }
        self.batch.put(partition_state, partition_state_key(self.partition), dumps(meta))


def feed(rt: PartitionRuntime, record: Any) -> int:
    """Put one envelope (see agents/ingest.py) into the partition's merge; return how
    many of its events were new (a re-delivered one was applied or queued before)."""
    doc = orjson.loads(record.value)
    merge = rt.merge
    new = 0
    offset = record.offset
    now = time.monotonic()
    for row in doc["r"]:
        mts = row.pop()
        source_partition = row[-1]
        code = m.ORDERS if row[0] == "o" else m.STOCK
        if merge.push((mts, code, source_partition, row[1]), Waiting(row, offset, now)):
            new += 1
        else:
            rt.counters["replayed"] += 1
    generation = rt.generation
    for code, partition, mts, next_offset, at_end, gen in doc["m"]:
        merge.report(
            (code, partition),
            m.NEVER if mts is None else mts,
            next_offset or 0,
            bool(at_end) and gen >= generation,
        )
    rt.read_upto = offset + 1
    return new


def apply_event(proc: BatchProcessor, item: Waiting) -> None:
    """Apply one event of the merge (its row: the event, then its input partition)."""
    row = item.row
    proc.src_partition = row[-1]
    if row[0] == "o":
        proc.src_topic = proc.orders_topic
        proc.order(row[:-1])
    else:
        proc.src_topic = proc.stock_topic
        proc.stock(row[:-1])


def start(rt: PartitionRuntime) -> BatchProcessor:
    """A new batch of the partition."""
    return BatchProcessor(rt, Batch(table_partition=rt.partition))


def not_idle(rt: PartitionRuntime) -> None:
    """An event was applied: the partition's idle clock starts again. (A progress
    report alone, which every ingest batch sends to every partition, is no event.)"""
    rt.idle_since, rt.idle_base = time.monotonic(), None


def finish(proc: BatchProcessor, tp: TP | None = None) -> Batch:
    """Stage the end-of-batch writes; with ``tp``, also the offset to resume from."""
    try:
        proc.finish()
    except Exception:
        forget_partitions({proc.partition})
        raise
    if tp is not None:
        offset = proc.rt.commit_offset()
        if offset is not None:
            proc.batch.sources[tp] = offset
            # Two batches may commit the same offset (while events wait in the merge):
            # a token of its own tells a retried commit whether this one landed.
            proc.batch.metadata[tp] = next_commit_token()
    return proc.batch


_COMMIT_PREFIX = uuid.uuid4().hex[:12]
_commit_count = itertools.count()


def next_commit_token() -> str:
    """Unique per commit of this process (the metadata of the tracker's offsets)."""
    return f"{_COMMIT_PREFIX}-{next(_commit_count)}"


def isolate(
    rt: PartitionRuntime, applied: list[Waiting], bad: Waiting, exc: Exception
) -> tuple[PartitionRuntime, BatchProcessor]:
    """The poison path: ``bad`` raised while being applied, after ``applied`` in this
    batch. Whatever it half-did is dropped with the runtime, which is rebuilt from the
    tables (the last commit), the batch's earlier events are applied again, and ``bad``
    becomes a dead letter instead, marked applied so a replay skips it too."""
    row = bad.row
    topic = topic_names()[m.ORDERS if row[0] == "o" else m.STOCK]
    log.warning(
        "Event %s/%s offset %s failed and goes to dead-letters: %r",
        topic,
        row[-1],
        row[1],
        exc,
    )
    fresh = rebuild(rt.partition)
    fresh.merge, fresh.generation, fresh.read_upto = rt.merge, rt.generation, rt.read_upto
    _runtimes[rt.partition] = fresh
    proc = start(fresh)
    for item in applied:
        apply_event(proc, item)
    proc.src_topic, proc.src_partition = topic, row[-1]
    if not proc.replayed(row[1]):
        fresh.counters["failed"] += 1
        proc.batch.emit(
            topics.dead_letters.get_topic_name(), None, failed_event_letter(topic, row, exc)
        )
    return fresh, proc


def failed_event_letter(topic: str, row: list[Any], exc: Exception) -> bytes:
    """The dead letter of a valid event whose processing failed.

    The tracker has the event as ingest parsed it, not its raw bytes: ``value`` is the
    parsed event as JSON (its fields as validated), ``key`` is null.
    """
    if row[0] == "o":
        _, offset, order_id, customer_id, sku, quantity, price, ts, partition = row
        event: dict[str, Any] = {
            "order_id": order_id,
            "customer_id": customer_id,
            "sku": sku,
            "quantity": quantity,
            "unit_price": price,
            "ts": format_ts(ts),
        }
    else:
        _, offset, event_id, sku, reason, quantity, supplier_id, ts, partition = row
        event = {
            "event_id": event_id,
            "sku": sku,
            "reason": reason,
            "quantity": quantity,
            "supplier_id": supplier_id,
            "ts": format_ts(ts),
        }
    return dead_letters.dead_letter(
        topic,
        partition,
        offset,
        None,
        orjson.dumps(event),
        f"processing failed: {exc!r}",
    )


def batches(tp: TP, records: Sequence[Any]) -> Iterator[Batch]:
    """Feed one fetch of envelopes into the partition's merge, then apply whatever the
    merge releases: one Batch (to commit) per ``BATCH_SIZE`` events, and a last one
    that also moves the committed offset.

    The caller commits each Batch before asking for the next. An event that fails is
    isolated (:func:`isolate`): it becomes a dead letter, the rest goes on.
    """
    rt = _runtimes[tp.partition]
    try:
        for record in records:
            feed(rt, record)
    except Exception:
        # Our own envelopes are valid by construction; if one is not, drop the
        # in-memory state (it may be half-fed) and stop rather than guess.
        forget_partitions({tp.partition})
        raise
    proc = start(rt)
    applied: list[Waiting] = []
    now = time.monotonic()
    observe = metrics.MERGE_WAIT.observe
    for _, item in rt.merge.ready():
        if not applied:
            not_idle(rt)
        observe(now - item.arrived)
        try:
            apply_event(proc, item)
        except Exception as exc:
            rt, proc = isolate(rt, applied, item, exc)
            applied = []
            continue
        applied.append(item)
        if len(applied) >= settings.batch_size:
            yield finish(proc, tp)
            proc, applied = start(rt), []
    yield finish(proc, tp)


async def track_partition(tp: TP, records: Sequence[Any], current: Callable[[], bool]) -> None:
    """Apply and commit one fetch of envelopes of one partition."""
    if tp.partition not in _runtimes or not current():
        return  # revoked meanwhile: Faust seeks back to the committed offset
    for batch in batches(tp, records):
        if not await _commit(tp, batch, current) or not current():
            return


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
    notify_waiters(batch)
    return True


def notify_waiters(batch: Batch) -> None:
    """Wake the ``GET /orders/{id}?wait=S`` requests for the orders this batch committed."""
    if waiters.orders:
        waiters.orders.notify(key for table, key in batch.table_writes if table is order_status)


async def idle_tick(now: float | None = None) -> int:
    """Idle close: commit the windows that idleness closed, per owned partition.

    A partition idle for WINDOW_IDLE_CLOSE_SECONDS gets the window stream time
    ``w.idle_stream_time`` gives; if that closes a held window, the stream time moves
    there and one transaction writes the window results and the tables
    (``BatchProcessor.finish``) with no input offsets. Otherwise nothing moves, so the
    stream time in memory is always the committed one. Runs under the tracker's lock,
    between batches. Returns how many partitions committed.
    """
    idle_s = settings.window_idle_close_seconds
    if idle_s <= 0:
        return 0
    committed = 0
    async with _tracker_lock:
        now = time.monotonic() if now is None else now
        for partition, rt in sorted(_runtimes.items()):
            if len(rt.merge):
                # Events wait for a lagging input partition: not idle, and moving its
                # stream time on would make them late.
                continue
            if rt.idle_base is None:
                rt.idle_base = rt.windows.stream_time
            target = w.idle_stream_time(rt.idle_base, now - rt.idle_since, idle_s)
            due = rt.windows.next_close_at
            if target is None or due is None or due > target:
                continue
            tp = TP(restorer.topic, partition)
            if _runtimes.get(partition) is not rt or not can_commit(tp):
                continue
            rt.windows.advance(target)
            await _commit(tp, finish(BatchProcessor(rt, Batch(table_partition=partition))))
            committed += 1
    return committed


async def _idle_timer() -> None:
    try:
        await idle_tick()
    except Exception as exc:
        # As for a failed batch: what was applied is unknown; restart from the tables.
        await app.crash(exc)
        raise


if settings.window_idle_close_seconds > 0:
    app.timer(min(1.0, settings.window_idle_close_seconds / 2))(_idle_timer)


FETCHES_QUEUED = 4
"""Most fetches of envelopes waiting for the tracker (the consumer waits when full)."""

_fetches = FetchQueue(FETCHES_QUEUED)
_tracker_lock = asyncio.Lock()
"""Held while a fetch is applied and committed, and by :func:`idle_tick`."""


async def tracker(records: Records, current: Callable[[], bool]) -> None:
    """The tap handler: queue the fetch for :func:`_run_tracker`.

    The tracker does not run in the consumer's fetch loop: applying and committing
    thousands of events (or restoring a partition) would hold back ingest, which then
    reads orders and stock moves produced far apart in one fetch (and loses their
    order across the two topics). One task applies the queued fetches in order; each
    still checks ``current()`` before it applies anything.
    """
    await _fetches.put(Fetch(records, current))


async def _run_tracker() -> None:
    while True:
        # Fetches queued during the last commit are applied as one (fewer, larger
        # transactions when the tracker falls behind).
        fetch = await _fetches.take(settings.batch_size)
        try:
            async with _tracker_lock:
                await track(fetch.records, fetch.current)
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
