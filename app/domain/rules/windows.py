"""Event-time windows for the window tracker, as pure functions (no Faust, no Kafka).

Faust's windowed tables expire on the wall clock, so windowing is done here on
*stream time*: the largest order ``ts`` seen in a partition of the SKU-keyed
stream. The agent keeps one :class:`PartitionWindows` per partition, feeds it
every valid non-duplicate order with :meth:`PartitionWindows.apply_order`, then
calls :meth:`PartitionWindows.close_due` and emits what it returns. The window values
it is built on (specs, assignment, aggregates, table keys) are in
:mod:`app.domain.rules.window_values`, and re-exported here.

Semantics (see the contract, "Semantics"):

* windows are epoch aligned, ``[start, end)``; a ``ts`` exactly on an edge
  belongs to the window starting there;
* a window closes when stream time ``>= end + grace_s``;
* an order is *late* for each of its windows that was already closed under the
  stream time **before** the order (an order that advances stream time is
  therefore never late for its own windows, since ``ts < end + grace_s``); it
  changes none of those, but still counts in its open windows;
* lateness depends only on stream time, never on whether ``close_due`` has run
  yet, so calling ``close_due`` after every order or once per batch gives the
  same closed windows, in the same order, and the same late counts;
* the first time a hopping window of a SKU holds more than
  ``expedite_threshold`` orders, one :class:`Expedite` is returned for it;
* **idle close** (off unless the agent sets it): a partition that received no
  event for ``idle_close_s`` seconds of wall time has its stream time moved on by
  the wall time elapsed since its last event (:func:`idle_stream_time`,
  :meth:`PartitionWindows.advance_to`); windows closed that way are closed like
  any other, and orders for them are late.

Revenue is kept as an exact :class:`~decimal.Decimal` (no rounding at all
while aggregating) and only rounded half-even to cents on output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from decimal import Decimal
from heapq import heapify, heappop, heappush
from math import floor
from typing import Final, NamedTuple, Protocol

from app.domain.rules.window_values import (
    EMPTY,
    KINDS,
    WindowAgg,
    WindowKey,
    WindowKind,
    WindowSpec,
    add,
    agg_from_json,
    agg_to_json,
    assign,
    closes_at,
    exact_add,
    exact_mul,
    hopping,
    idle_stream_time,
    is_closed,
    parse_window_key,
    revenue_cents,
    revenue_out,
    revenue_str,
    tumbling,
    validate_spec,
    window_key_str,
    window_starts,
)

__all__ = [
    "EMPTY",
    "KINDS",
    "ClosedWindow",
    "Expedite",
    "OrderWindowsResult",
    "PartitionWindows",
    "StoredWindow",
    "WindowAgg",
    "WindowKey",
    "WindowKind",
    "WindowSpec",
    "WindowStore",
    "add",
    "agg_from_json",
    "agg_to_json",
    "assign",
    "closes_at",
    "hopping",
    "idle_stream_time",
    "is_closed",
    "parse_window_key",
    "revenue_cents",
    "revenue_out",
    "revenue_str",
    "tumbling",
    "window_key_str",
    "window_starts",
]

# ---------------------------------------------------------------------- partition

_tuple_new: Final = tuple.__new__  # NamedTuple(...) goes through a slow Python __new__


class Expedite(NamedTuple):
    """A hopping window of a SKU went over the threshold (the agent adds the
    supplier order id)."""

    sku: str
    window_start: int
    window_end: int
    orders: int

    @property
    def key(self) -> WindowKey:
        return (self.sku, "hopping", self.window_start)


class OrderWindowsResult(NamedTuple):
    """What one order did to the windows of its partition."""

    late: int  # windows of this order already closed (it was excluded from them)
    expedites: list[Expedite]
    changed: list[WindowKey]  # windows whose aggregate changed (write them back)

    @property
    def is_late(self) -> bool:
        return self.late > 0


class ClosedWindow(NamedTuple):
    """The final result of a window, returned exactly once by ``close_due``."""

    sku: str
    kind: WindowKind
    window_start: int
    window_end: int
    agg: WindowAgg

    @property
    def key(self) -> WindowKey:
        return (self.sku, self.kind, self.window_start)


class StoredWindow(NamedTuple):
    """An open window as the agent's table holds it."""

    key: WindowKey
    agg: WindowAgg
    expedited: bool
    """Whether it has raised its expedite already."""


class WindowStore(Protocol):
    """The open windows of one partition as a store holds them, read on demand by a
    :class:`PartitionWindows` restored with :meth:`PartitionWindows.restore_from`.

    Only windows not yet emitted are returned (a store may still hold closed ones, for
    reading); what the store says of a window the :class:`PartitionWindows` holds in
    memory, or has emitted, is never used, so it need not be current for them.
    """

    def of_sku(self, sku: str, starts_from: Mapping[WindowKind, int]) -> Iterable[StoredWindow]:
        """Every open window of ``sku`` of each kind of ``starts_from`` that starts at or
        after ``starts_from[kind]``, in any order (older ones may come too)."""
        ...

    def starting(self, kind: WindowKind, lo: int, hi: int) -> Iterable[StoredWindow]:
        """Every open window of ``kind`` with ``lo <= start < hi``, in any order."""
        ...

    def first_start(self, kind: WindowKind, lo: int) -> int | None:
        """The smallest start ``>= lo`` of an open window of ``kind`` (None: none)."""
        ...


def _closed_order(c: ClosedWindow) -> tuple[int, str, str, int]:
    return (c.window_end, c.kind, c.sku, c.window_start)


_NO_TIME: Final = -math.inf  # internal stream time before the first order


class _Acc:
    """Mutable running aggregate of one open window (internal: updating it in
    place is about twice as fast as building a new WindowAgg per order)."""

    __slots__ = ("orders", "revenue", "units")

    def __init__(self, orders: int, units: int, revenue: Decimal) -> None:
        self.orders = orders
        self.units = units
        self.revenue = revenue

    def freeze(self) -> WindowAgg:
        return _tuple_new(WindowAgg, (self.orders, self.units, self.revenue))


class PartitionWindows:
    """Open window aggregates and stream time of one partition (pure, in memory).

    State: the stream time, the aggregates of the open windows keyed by
    ``(sku, kind, start)``, a min-heap of ``(close_at, sku, kind, start)`` to
    find due windows in O(log n), and the keys of hopping windows already
    expedited. Closed windows leave all of them, so memory is bounded by the
    windows that can still receive orders.

    Restored with :meth:`restore_from`, it reads the open windows from a
    :class:`WindowStore` as they are needed instead: one SKU's at its first order,
    and the others' as stream time makes them due. A restart then costs nothing per
    window, and gives the same results as an uninterrupted run.

    Not thread-safe; one instance per partition, used by one agent.
    """

    __slots__ = (
        "_accs",
        "_by_kind",
        "_expedited",
        "_frontier",
        "_grace",
        "_heap",
        "_lazy_until",
        "_loaded",
        "_max_start",
        "_plan",
        "_scan_only",
        "_specs",
        "_store",
        "_stream_time",
        "_threshold",
    )

    def __init__(self, specs: Sequence[WindowSpec], grace_s: int, expedite_threshold: int) -> None:
        checked = tuple(validate_spec(s) for s in specs)
        kinds = [s.kind for s in checked]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"at most one window spec per kind, got {kinds}")
        if isinstance(grace_s, bool) or not isinstance(grace_s, int) or grace_s < 0:
            raise ValueError(f"grace_s must be an integer >= 0, got {grace_s!r}")
        if (
            isinstance(expedite_threshold, bool)
            or not isinstance(expedite_threshold, int)
            or expedite_threshold < 0
        ):
            raise ValueError(
                f"expedite_threshold must be an integer >= 0, got {expedite_threshold!r}"
            )
        self._specs = checked
        self._by_kind: dict[str, WindowSpec] = {s.kind: s for s in checked}
        self._grace = grace_s
        self._threshold = expedite_threshold
        # Per spec: kind, size, step, first-start offset, close offset, is hopping.
        self._plan: tuple[tuple[WindowKind, int, int, int, int, bool], ...] = tuple(
            (
                s.kind,
                s.size_s,
                s.step_s,
                s.step_s - s.size_s,
                s.size_s + grace_s,
                s.kind == "hopping",
            )
            for s in checked
        )
        self._stream_time: float = _NO_TIME
        self._accs: dict[WindowKey, _Acc] = {}
        self._heap: list[tuple[int, str, WindowKind, int]] = []
        self._expedited: set[WindowKey] = set()
        # Upper bound of open starts not implied by stream time (after restore).
        self._max_start: float = _NO_TIME
        # Set by restore() if a start is not aligned to its spec (settings changed).
        self._scan_only = False
        # Lazy restore (restore_from): where the windows not in memory are, the SKUs
        # whose windows are all in memory, and per kind the start before which every
        # window of the others has been taken in (or emitted), up to the last start
        # the store can hold (_lazy_until). None once everything is in memory.
        self._store: WindowStore | None = None
        self._loaded: set[str] = set()
        self._frontier: dict[WindowKind, int] = {}
        self._lazy_until = 0

    # ------------------------------------------------------------------ views

    @property
    def specs(self) -> tuple[WindowSpec, ...]:
        return self._specs

    @property
    def grace_s(self) -> int:
        return self._grace

    @property
    def expedite_threshold(self) -> int:
        return self._threshold

    @property
    def stream_time(self) -> float | None:
        """Largest order ts applied so far (None before the first order)."""
        st = self._stream_time
        return None if st == _NO_TIME else st

    @property
    def expedited(self) -> Set[WindowKey]:
        """Live read-only view of the expedited keys of windows not yet closed."""
        return self._expedited

    def get(self, key: WindowKey) -> WindowAgg | None:
        """Current aggregate of an open window (None if not open / never seen)."""
        if self._store is not None and key[0] not in self._loaded:
            self._load_sku(key[0])
        acc = self._accs.get(key)
        return None if acc is None else acc.freeze()

    def items(self) -> Iterator[tuple[WindowKey, WindowAgg]]:
        """Every open window and its aggregate, in no particular order (after a
        :meth:`restore_from`, only those in memory: see :meth:`load_all`)."""
        for key, acc in self._accs.items():
            yield key, acc.freeze()

    def __contains__(self, key: object) -> bool:
        return key in self._accs

    def __len__(self) -> int:
        """Number of open windows held."""
        return len(self._accs)

    def spec(self, kind: WindowKind) -> WindowSpec | None:
        return self._by_kind.get(kind)

    def is_closed(self, key: WindowKey) -> bool:
        """Whether the window ``key`` is closed by stream time (due or emitted)."""
        spec = self._by_kind.get(key[1])
        if spec is None:
            raise ValueError(f"no window spec of kind {key[1]!r}")
        return self._stream_time >= key[2] + spec.size_s + self._grace

    # --------------------------------------------------------------- hot path

    def apply_order(
        self, sku: str, ts: float, quantity: int, unit_price: Decimal
    ) -> OrderWindowsResult:
        """Count one valid, non-duplicate order in its open windows.

        Lateness is judged against the stream time before the order, whether or
        not ``close_due`` has run since; the stream time is advanced last. ``ts``
        must be finite and ``unit_price`` a finite Decimal (the agent validates
        input before this).
        """
        if self._store is not None and sku not in self._loaded:
            self._load_sku(sku)
        before = self._stream_time
        t = floor(ts)
        value = exact_mul(unit_price, quantity)
        accs = self._accs
        accs_get = accs.get
        threshold = self._threshold
        late = 0
        changed: list[WindowKey] = []
        expedites: list[Expedite] = []
        for kind, size, step, first_off, close_off, is_hopping in self._plan:
            last = t - t % step
            for start in range(last + first_off, last + step, step):
                close_at = start + close_off
                if before >= close_at:
                    late += 1
                    continue
                key = (sku, kind, start)
                acc = accs_get(key)
                if acc is None:
                    acc = accs[key] = _Acc(1, quantity, value)
                    heappush(self._heap, (close_at, sku, kind, start))
                else:
                    acc.orders += 1
                    acc.units += quantity
                    acc.revenue = exact_add(acc.revenue, value)
                changed.append(key)
                if is_hopping and acc.orders > threshold and key not in self._expedited:
                    self._expedited.add(key)
                    expedites.append(Expedite(sku, start, start + size, acc.orders))
        if ts > before:
            self._stream_time = ts
        return _tuple_new(OrderWindowsResult, (late, expedites, changed))

    def advance(self, ts: float) -> None:
        """Move stream time to ``ts`` if later, without counting an order.

        For the agent only if it decides that something other than a counted
        order (e.g. a duplicate) moves stream time; ``apply_order`` already
        advances it.
        """
        floor(ts)  # same finiteness check as apply_order
        if ts > self._stream_time:
            self._stream_time = ts

    @property
    def next_close_at(self) -> int | None:
        """Stream time at which the next open window closes (None if none is open).

        After a :meth:`restore_from`, windows still in the store count too; it may then
        be the close of a window since emitted (the store is behind), never later
        than the next close.
        """
        due = self._heap[0][0] if self._heap else None
        store = self._store
        if store is not None:
            for kind, _size, _step, _first_off, close_off, _ in self._plan:
                start = store.first_start(kind, self._frontier[kind])
                if start is not None and start <= self._lazy_until:
                    close_at = start + close_off
                    due = close_at if due is None else min(due, close_at)
        return due

    def advance_to(self, stream_time: float) -> list[ClosedWindow]:
        """Move stream time to ``stream_time`` (if later) without an order, and remove
        and return the windows that are then closed (as :meth:`close_due`).

        For idle close: the agent moves an idle partition's stream time on by wall
        time. Orders that arrive afterwards are judged against the new stream time,
        so an order for a window closed this way is late.
        """
        self.advance(stream_time)
        return self.close_due()

    def close_due(self) -> list[ClosedWindow]:
        """Remove and return every window closed by the current stream time.

        Sorted by (window_end, kind, sku, window_start). Each window is returned
        once: it leaves the structure, and no order can reach it again (its
        expedited mark is forgotten too).
        """
        st = self._stream_time
        if self._store is not None:
            self._take_due(st)
        heap = self._heap
        if not heap or heap[0][0] > st:
            return []
        accs = self._accs
        expedited = self._expedited
        grace = self._grace
        out: list[ClosedWindow] = []
        while heap and heap[0][0] <= st:
            close_at, sku, kind, start = heappop(heap)
            key = (sku, kind, start)
            expedited.discard(key)
            acc = accs.pop(key, None)
            if acc is not None:
                out.append(ClosedWindow(sku, kind, start, close_at - grace, acc.freeze()))
        out.sort(key=_closed_order)
        return out

    # ---------------------------------------------------------------- restore

    def restore(
        self,
        aggs: Iterable[tuple[WindowKey, WindowAgg]],
        stream_time: float | None,
        expedited: Iterable[WindowKey],
    ) -> None:
        """Replace the whole state with one read back from tables after a restart.

        ``aggs`` are the open (not yet emitted) windows; one already due at
        ``stream_time`` is returned by the next ``close_due``. Expedited keys of
        windows closed at ``stream_time`` are dropped. Raises ValueError for a
        key whose kind has no spec here (the state is then left unchanged).
        """
        st = _NO_TIME if stream_time is None else stream_time
        grace = self._grace
        by_kind = self._by_kind

        def close_at_of(key: WindowKey) -> int:
            spec = by_kind.get(key[1])
            if spec is None:
                raise ValueError(f"restored window key {key!r}: no window spec of that kind")
            return key[2] + spec.size_s + grace

        accs: dict[WindowKey, _Acc] = {}
        heap: list[tuple[int, str, WindowKind, int]] = []
        for key, agg in aggs:
            if key not in accs:
                heap.append((close_at_of(key), key[0], key[1], key[2]))
            accs[key] = _Acc(agg.orders, agg.units, agg.revenue)
        new_expedited: set[WindowKey] = set()
        for key in expedited:
            close_at = close_at_of(key)
            if st >= close_at or key in new_expedited:
                continue  # closed: no order can reach it again
            new_expedited.add(key)
            if key not in accs:
                # No aggregate (inconsistent tables): keep a heap entry anyway so
                # that close_due forgets the key in time.
                heap.append((close_at, key[0], key[1], key[2]))
        heapify(heap)
        self._accs = accs
        self._heap = heap
        self._expedited = new_expedited
        self._stream_time = st
        self._max_start = max((k[2] for k in accs), default=_NO_TIME)
        self._scan_only = any(k[2] % by_kind[k[1]].step_s for k in accs)
        self._store = None
        self._loaded = set()

    def restore_from(self, store: WindowStore, stream_time: float | None, open_from: int) -> None:
        """Replace the whole state with the one in ``store``, read on demand.

        ``stream_time`` is the stream time the store's windows were written at, and
        ``open_from`` a lower bound of the starts of its open windows. Nothing is read
        here: a SKU's windows are read at its first order (or :meth:`get`), and the
        other SKUs' windows as stream time makes them due (:meth:`close_due`), until
        stream time has passed every window the store can hold. Then the store is no
        longer used. The results are those of :meth:`restore` with every window.
        """
        self.restore((), stream_time, ())
        if stream_time is None:
            return  # no order yet: the store holds no window
        self._store = store
        self._frontier = {spec.kind: open_from for spec in self._specs}
        # An order opens windows starting at or before its ts only.
        self._lazy_until = floor(stream_time)
        self._max_start = self._lazy_until
        self._end_lazy_if_done()

    def load_all(self) -> None:
        """Read every window still in the store (after :meth:`restore_from`)."""
        if self._store is not None:
            for spec in self._specs:
                self._take(spec.kind, self._lazy_until + 1)
            self._end_lazy_if_done()

    def _load_sku(self, sku: str) -> None:
        store = self._store
        assert store is not None
        self._loaded.add(sku)
        for stored in store.of_sku(sku, self._frontier):
            key = stored.key
            frontier = self._frontier.get(key[1])
            # Before its kind's frontier: taken in by _take_due already (held or emitted).
            if key not in self._accs and frontier is not None and key[2] >= frontier:
                self._hold(stored)

    def _take_due(self, stream_time: float) -> None:
        """Take in, from the store, the windows of SKUs not loaded that ``stream_time``
        closes: close_due then emits them with the others, in order."""
        for kind, _size, _step, _first_off, close_off, _ in self._plan:
            self._take(kind, floor(stream_time) - close_off + 1)  # starts before it are due
        self._end_lazy_if_done()

    def _take(self, kind: WindowKind, start_before: int) -> None:
        """Take in the stored windows of ``kind`` of SKUs not loaded that start before
        ``start_before``, and move the kind's frontier there."""
        store = self._store
        assert store is not None
        lo = self._frontier[kind]
        if start_before <= lo:
            return
        loaded = self._loaded
        accs = self._accs
        for stored in store.starting(kind, lo, start_before):
            if stored.key[0] not in loaded and stored.key not in accs:
                self._hold(stored)
        self._frontier[kind] = start_before

    def _hold(self, stored: StoredWindow) -> None:
        key, agg, expedited = stored
        spec = self._by_kind.get(key[1])
        if spec is None:  # pragma: no cover - both kinds always have a spec
            return
        close_at = key[2] + spec.size_s + self._grace
        self._accs[key] = _Acc(agg.orders, agg.units, agg.revenue)
        heappush(self._heap, (close_at, key[0], key[1], key[2]))
        if expedited and self._stream_time < close_at:
            self._expedited.add(key)
        if key[2] % spec.step_s:
            self._scan_only = True

    def _end_lazy_if_done(self) -> None:
        if all(f > self._lazy_until for f in self._frontier.values()):
            self._store = None
            self._loaded = set()
            self._frontier = {}

    # ------------------------------------------------------------------- HTTP

    def windows_for(self, sku: str, kind: WindowKind) -> list[tuple[int, int, WindowAgg]]:
        """Open windows of one SKU and kind as (start, end, agg), sorted by start.

        Looks up the few candidate starts between the oldest open window and the
        stream time instead of scanning every open window (it scans only if that
        range would be larger than the table).
        """
        if self._store is not None and sku not in self._loaded:
            self._load_sku(sku)
        spec = self._by_kind.get(kind)
        accs = self._accs
        if spec is None or not accs:
            return []
        size, step = spec.size_s, spec.step_s
        hi_bound = max(self._stream_time, self._max_start)
        found: list[tuple[int, int, WindowAgg]] = []
        if hi_bound != _NO_TIME and self._heap and not self._scan_only:
            # Every open window has a heap entry, so start >= min close_at - size - grace;
            # an order creates windows with start <= ts <= stream time only.
            lo = self._heap[0][0] - size - self._grace
            lo = -(-lo // step) * step
            hi = floor(hi_bound)
            if (hi - lo) // step + 1 <= len(accs):
                for start in range(lo, hi + 1, step):
                    acc = accs.get((sku, kind, start))
                    if acc is not None:
                        found.append((start, start + size, acc.freeze()))
                return found
        for (k_sku, k_kind, start), acc in accs.items():
            if k_sku == sku and k_kind == kind:
                found.append((start, start + size, acc.freeze()))
        found.sort(key=lambda w: w[0])
        return found
