"""The join's order: every input partition merged by event time (pure, no Faust, no I/O).

The contract applies the valid events of ``orders`` and ``stock`` as one stream, sorted
by the *merge key* ``(mts, topic, partition, offset)``: ``mts`` is the largest ``ts`` of
the event's own input partition up to and including the event, ``topic`` is 0 for
``orders`` and 1 for ``stock`` (orders first on a tie). Within one input partition the
key only grows, so each input partition is a sorted run and the join is a k-way merge
of those runs, as Kafka Streams' timestamp synchronisation and Flink's watermarks do it.

A :class:`Merge` holds the events of one partition of the SKU-keyed stream that arrived
but may not be applied yet, and what each input partition (a *source*) said of its
progress: the largest ``ts`` it has read so far, the next offset it will read, and
whether it has read everything the broker holds. The next event can be applied once
no source can still deliver an event with a smaller key: every other source has
either moved past the event's key or is read to its end. A source that is read to its
end holds nothing back; its later events, if older than what was already applied, are
applied as soon as they arrive, which is the only way live operation can differ from a
replay.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

ORDERS = 0
"""Topic code of ``orders`` in a merge key (orders sort first on equal ``mts``)."""
STOCK = 1
"""Topic code of ``stock``."""

NEVER = float("-inf")
"""``mts`` of a source that has not read any valid event yet."""

Source = tuple[int, int]
"""(topic code, input partition)."""
Key = tuple[float, int, int, int]
"""(mts, topic code, input partition, input offset)."""

T = TypeVar("T")


@dataclass(slots=True)
class Progress:
    """What one source said of itself last (all three only ever move forward,
    except ``at_end``, which is whatever the newest report says)."""

    mts: float = NEVER
    """Largest ``ts`` among the valid events the source has read."""
    next_offset: int = 0
    """The next offset the source will read: everything below it has been sent."""
    at_end: bool = False
    """The source has read everything the broker held when it last looked."""


class Merge(Generic[T]):
    """The waiting events of one SKU partition, released in merge-key order."""

    __slots__ = ("_heap", "_seq", "progress", "sent_upto")

    def __init__(self, sources: Iterable[Source] = ()) -> None:
        self.progress: dict[Source, Progress] = {s: Progress() for s in sources}
        """Every source the merge waits for; one that never reported holds back all."""
        self.sent_upto: dict[Source, int] = {}
        """Per source, the highest input offset pushed (a re-delivery is not pushed)."""
        self._heap: list[tuple[Key, int, T]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add_sources(self, sources: Iterable[Source]) -> None:
        for s in sources:
            self.progress.setdefault(s, Progress())

    def report(self, source: Source, mts: float, next_offset: int, at_end: bool) -> None:
        """A progress report of ``source``: all its events up to ``next_offset`` were sent."""
        p = self.progress.get(source)
        if p is None:
            p = self.progress[source] = Progress()
        if mts > p.mts:
            p.mts = mts
        if next_offset > p.next_offset:
            p.next_offset = next_offset
        p.at_end = at_end

    def push(self, key: Key, item: T) -> bool:
        """Add one event; False (and nothing added) if this offset was pushed before."""
        mts, code, partition, offset = key
        source = (code, partition)
        if offset <= self.sent_upto.get(source, -1):
            return False
        self.sent_upto[source] = offset
        p = self.progress.get(source)
        if p is None:
            p = self.progress[source] = Progress()
        # The event itself shows how far its source has read.
        if mts > p.mts:
            p.mts = mts
        if offset + 1 > p.next_offset:
            p.next_offset = offset + 1
        heapq.heappush(self._heap, (key, self._seq, item))
        self._seq += 1
        return True

    def _bounds(self) -> tuple[tuple[float, int, int] | None, tuple[float, int, int] | None]:
        """The two smallest (mts, code, partition) of the sources still being waited for."""
        first: tuple[float, int, int] | None = None
        second: tuple[float, int, int] | None = None
        for (code, partition), p in self.progress.items():
            if p.at_end:
                continue
            b = (p.mts, code, partition)
            if first is None or b < first:
                first, second = b, first
            elif second is None or b < second:
                second = b
        return first, second

    def ready(self) -> Iterator[tuple[Key, T]]:
        """Pop, in key order, every event that no source can still precede.

        An event from source ``s`` with key ``(m, s, offset)`` is safe when every other
        source ``r`` that is not read to its end has ``(mts_r, r) > (m, s)``: whatever
        ``r`` sends next has a key of at least ``(mts_r, r, next_offset_r)``.
        """
        heap = self._heap
        if not heap:
            return
        first, second = self._bounds()
        while heap:
            key = heap[0][0]
            head = (key[0], key[1], key[2])
            bound = first
            if first is not None and (first[1], first[2]) == (key[1], key[2]):
                bound = second  # the event's own source never precedes it
            if bound is not None and not head < bound:
                return
            _, _, item = heapq.heappop(heap)
            yield key, item

    def resume_points(self) -> dict[Source, tuple[int, float]]:
        """Per source, where a reader must start again for this merge to miss nothing if
        the waiting events were lost: ``(offset, mts)``, the oldest waiting event's offset
        and merge-key ``mts``, else the next offset and the ``mts`` so far. Reading on
        from ``offset`` with ``mts`` as the largest ``ts`` before it gives every later
        event its own merge key again (the waiting event's ``mts`` already includes its
        own ``ts``)."""
        points = {s: (p.next_offset, p.mts) for s, p in self.progress.items()}
        for (mts, code, partition, offset), _, _ in self._heap:
            source = (code, partition)
            found = points.get(source)
            if found is None or offset < found[0]:
                points[source] = (offset, mts)
        return points

    def pending(self) -> Iterator[T]:
        """The waiting events, in no particular order."""
        return (item for _, _, item in self._heap)


def contract_order(events: Iterable[tuple[Source, float, T]]) -> list[T]:
    """The contract's order of a finished stream (a replay: every source read to its
    end). ``events`` lists each source's valid events in offset order (sources may
    interleave), as ``(source, ts, item)``; returns the items in merge-key order."""
    mts: dict[Source, float] = {}
    count: dict[Source, int] = {}
    keyed: list[tuple[Key, T]] = []
    for source, ts, item in events:
        m = max(mts.get(source, NEVER), ts)
        mts[source] = m
        n = count.get(source, 0)
        count[source] = n + 1
        keyed.append(((m, source[0], source[1], n), item))
    keyed.sort(key=lambda pair: pair[0])
    return [item for _, item in keyed]
