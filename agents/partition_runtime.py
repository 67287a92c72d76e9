"""The tracker's state per partition of the SKU-keyed stream, and how it is rebuilt.

What the rules need between batches lives in memory, bounded by the SKUs and open
windows, not by the orders: the open windows, the join's merge (waiting events and
each input partition's progress), counters. The duplicate memory and the closed windows
kept for HTTP live in RocksDB only (``seen-ids`` with its expiry index, ``windows`` purged
by key range). A runtime is rebuilt from the tables (:func:`rebuild`) when its partition
is assigned, so a restart or rebalance resumes exactly where the last committed batch
left off. The rebuild reads one document; the open windows are read as they are needed
(:attr:`PartitionRuntime.windows`, :class:`TableWindows`): a SKU's at its first order,
the others' as stream time closes them. Nothing in it grows with the data, so a restart
or a takeover is ready as soon as the stores are, and its first orders wait for no more
than their own SKUs' windows. This module owns that runtime, the restorer
of the tracker's tables and the encodings of their keys and documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP

from app.domain.events import format_ts
from app.domain.models import INITIAL, SkuState, SupplierOrder
from app.domain.rules import merge as m
from app.domain.rules import windows as w
from app.engine import topics
from app.engine.instance import app, settings
from app.engine.restore import Restorer
from app.engine.stores import complete_index, get, local_range
from tables import order_status, partition_state, seen_ids, sku_state, supplier_orders, windows
from tables.windows import keys_between

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
    loaded_windows: w.PartitionWindows | None = None
    """The open windows, set up at their first use after the rebuild (:attr:`windows`)
    and read from the table on demand: setting up a partition costs nothing per
    window."""
    saved_windows: dict[str, Any] = field(default_factory=dict)
    """What the last commit recorded of the windows (``order_stream_time``, ``open_from``):
    what they are until they are loaded."""
    purge_from: dict[str, int] = field(default_factory=dict)
    """Per window kind: every closed window starting before this has left the table."""
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
    fresh_from: int | None = None
    """The end offset of this partition of the SKU-keyed topic right after the runtime
    was built: a source's "read to its end" counts only if its envelope is at or after
    it (agents/tracker.py, ``is_fresh``). None until known (``learn_fresh_from``)."""
    source_ends: dict[m.Source, int] = field(default_factory=dict)
    """The end offset (read_committed) of every input partition, read with ``fresh_from``:
    an older envelope's "read to its end" counts if it had read that far
    (agents/tracker.py, ``is_trusted``)."""
    read_upto: int | None = None
    """Offset after the last envelope fed to ``merge``."""
    idle_since: float = field(default_factory=time.monotonic)
    """Wall clock (monotonic) of the last batch of input, or of the rebuild: idle close
    measures from here, so after a restart the idle clock starts again."""
    idle_base: float | None = None
    """Window stream time right after that batch (taken by the first idle tick after it)."""

    @property
    def windows(self) -> w.PartitionWindows:
        """The partition's open windows and window stream time (set up on first use)."""
        if self.loaded_windows is None:
            self.loaded_windows = open_windows(self.partition, self.saved_windows)
        return self.loaded_windows

    def windows_record(self) -> dict[str, Any]:
        """What a commit records of the windows, for :func:`load_windows` after a rebuild:
        the window stream time, and a lower bound of the open windows' starts (None: no
        window is open; absent: unknown, read them all)."""
        pw = self.loaded_windows
        if pw is None:
            return self.saved_windows
        close_at = pw.next_close_at
        longest_s = max(spec.size_s for spec in SPECS)
        return {
            "order_stream_time": pw.stream_time,
            "open_from": None if close_at is None else close_at - longest_s - pw.grace_s,
        }

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

runtimes: dict[int, PartitionRuntime] = {}


TABLES = (sku_state, supplier_orders, order_status, seen_ids, windows, partition_state)


def _rebuilt(partition: int) -> None:
    runtimes[partition] = rebuild(partition)


restorer = Restorer(
    topics.events_by_sku.get_topic_name(), TABLES, settings.broker_host_ports, _rebuilt
)
"""Restores this agent's partitions on assignment, and rebuilds their runtimes."""


async def runtime_for(partition: int) -> PartitionRuntime:
    """The partition's runtime; restores its tables and rebuilds it if needed."""
    while (rt := runtimes.get(partition)) is None:
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


def progress_to_resume_from(partition: int, meta: dict[str, Any]) -> dict[str, list[Any]]:
    """What a rebuilt merge knows of each source's progress.

    The repartitioned join (``JOIN_READ=repartition``) knows how far each source got
    (``sources``): a lower bound that stays true. The direct join (agents/direct.py)
    reads the sources itself, from where this merge can lose nothing: the last commit's
    ``resume`` points (``Merge.resume_points``), which become the progress, so a reader
    starting there gives every event its own merge key. A partition that the other
    mode wrote has no such points: the direct join then reads its sources from their
    earliest records again, and the watermarks skip what was applied.
    """
    if settings.join_read == "repartition":
        return dict(meta.get("sources", {}))
    resume = meta.get("resume")
    if resume is None and meta.get("watermarks"):
        log.warning(
            "Partition %d was written by the repartitioned join: its input is read again "
            "from the earliest records kept (what was applied is skipped)",
            partition,
        )
    return dict(resume or {})


def rebuild(partition: int) -> PartitionRuntime:
    rt = PartitionRuntime(partition)
    raw_meta = get(partition_state, partition_state_key(partition), partition)
    meta = orjson.loads(raw_meta) if raw_meta else {}
    rt.stream_time = meta.get("stream_time")
    rt.counters.update(meta.get("counters", {}))
    rt.watermarks = meta.get("watermarks", {})
    rt.merge = new_merge(rt.watermarks, progress_to_resume_from(partition, meta))
    rt.generation = app.consumer_generation_id
    rt.recent_expedites = meta.get("recent_expedites", [])
    rt.recent_results = meta.get("recent_results", [])
    rt.saved_windows = {k: meta[k] for k in ("order_stream_time", "open_from") if k in meta}
    rt.purge_from = meta.get("purge_from", {})
    for table in (seen_ids, windows, order_status):
        # Only for a store partition of a release that kept no such index: once.
        if complete_index(table, partition):
            log.info("Partition %d: the local index of %s rebuilt", partition, table.name)
    return rt


CLOSED = b'"closed":true'
"""How a closed window's document says so (``dumps`` writes no spaces): the documents
of closed windows are told apart without parsing them."""


def window_keys_from(kind: str, start: int) -> bytes:
    """The first ``windows`` key of ``kind`` with a start at or after ``start`` (keys of
    one kind sort by start: ``w.window_key_str``)."""
    return f"{kind}|{max(int(start), 0):012d}|".encode()


def open_windows(partition: int, saved: dict[str, Any]) -> w.PartitionWindows:
    """The open windows of ``partition`` as the last commit left them, read from the
    table on demand (:class:`TableWindows`). A partition document of a release that
    recorded no ``open_from`` has them all read now (:func:`load_windows`)."""
    if "open_from" not in saved or "order_stream_time" not in saved:
        return load_windows(partition, saved)
    pw = w.PartitionWindows(SPECS, settings.window_grace_seconds, settings.expedite_threshold)
    open_from = saved["open_from"]
    if open_from is None:  # no window open
        pw.restore((), saved["order_stream_time"], ())
    else:
        pw.restore_from(TableWindows(partition), saved["order_stream_time"], int(open_from))
    return pw


@dataclass(frozen=True, slots=True)
class TableWindows:
    """The open windows of one partition's ``windows`` table (a ``w.WindowStore``).

    A SKU's are found by the table's local index by SKU (tables/windows.py), a kind's
    by start by key range (keys of one kind sort by start); closed windows' documents
    are skipped unparsed.
    """

    partition: int

    def of_sku(
        self, sku: str, starts_from: Mapping[w.WindowKind, int]
    ) -> Iterator[w.StoredWindow]:
        # From each kind's start on: the index holds the SKU's closed windows too, for an
        # hour (CLOSED_WINDOW_RETENTION_SECONDS), tens of them for a busy SKU.
        for kind, start in starts_from.items():
            first, stop = window_keys_from(kind, start), kind.encode() + b"}"
            for key in keys_between(sku, self.partition, first, stop):
                value = get(windows, key, self.partition)
                if value is not None and CLOSED not in value:
                    yield stored_window(key, value)

    def starting(self, kind: w.WindowKind, lo: int, hi: int) -> Iterator[w.StoredWindow]:
        return stored_between(
            self.partition, window_keys_from(kind, lo), window_keys_from(kind, hi)
        )

    def first_start(self, kind: w.WindowKind, lo: int) -> int | None:
        start, stop = window_keys_from(kind, lo), kind.encode() + b"}"
        for key, value in local_range(windows, self.partition, start, stop):
            if CLOSED not in value:
                return w.parse_window_key(key.decode())[2]
        return None


def stored_window(key: bytes, value: bytes) -> w.StoredWindow:
    doc = orjson.loads(value)
    return w.StoredWindow(
        w.parse_window_key(key.decode()), w.agg_from_json(doc), bool(doc.get("expedited"))
    )


def stored_between(partition: int, first: bytes, stop: bytes) -> Iterator[w.StoredWindow]:
    """The open windows of ``partition`` with keys from ``first`` up to ``stop``
    (excluded); closed ones are skipped unparsed."""
    for key, value in local_range(windows, partition, first, stop):
        if CLOSED not in value:
            yield stored_window(key, value)


def load_windows(partition: int, saved: dict[str, Any]) -> w.PartitionWindows:
    """The open windows of ``partition`` from the table, all read now: only the keys
    from ``open_from`` on are read, and only open ones are parsed."""
    pw = w.PartitionWindows(SPECS, settings.window_grace_seconds, settings.expedite_threshold)
    open_from = saved.get("open_from", 0)
    stored = [
        found
        for spec in (SPECS if open_from is not None else ())
        for found in stored_between(
            partition, window_keys_from(spec.kind, open_from), spec.kind.encode() + b"}"
        )
    ]
    pw.restore(
        [(s.key, s.agg) for s in stored],
        saved.get("order_stream_time"),
        [s.key for s in stored if s.expedited],
    )
    return pw


def forget_partitions(partitions: set[int]) -> None:
    restorer.forget(partitions)
    for p in partitions:
        runtimes.pop(p, None)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    # Another worker may process these partitions next; our in-memory view would be stale
    # if they come back, so drop it and rebuild from the tables when they do.
    forget_partitions({tp.partition for tp in revoked if tp.topic == restorer.topic})


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    # Restore now, not at the first batch: a partition that gets no new input must
    # still be served (and counted in /stats) right after a restart or a takeover.
    void = restorer.settle(tp.partition for tp in assigned if tp.topic == restorer.topic)
    for p in void:
        runtimes.pop(p, None)


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
