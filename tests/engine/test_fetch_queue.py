"""The queue between the consumer's fetch loop and the ingest and tracker tasks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from app.engine.consumer import Fetch, FetchQueue, merged

A = TP("orders", 0)
B = TP("stock", 1)


def recs(*offsets: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in offsets]


def offsets(fetch: Fetch, tp: TP) -> list[int]:
    return [r.offset for r in fetch.records.get(tp, [])]


def live() -> bool:
    return True


def stale() -> bool:
    return False


def test_consecutive_fetches_merge_in_offset_order_with_the_latest_ends() -> None:
    first = Fetch({A: recs(1, 2)}, live, {A: False, B: False}, generation=3)
    second = Fetch({A: recs(3), B: recs(7, 8)}, live, {A: True, B: False}, generation=3)
    third = Fetch({B: recs(9)}, live, {A: True, B: True}, generation=3)
    got = merged([first, second, third])
    assert offsets(got, A) == [1, 2, 3]
    assert offsets(got, B) == [7, 8, 9]
    assert got.ends == {A: True, B: True}
    assert got.generation == 3
    assert got.current is third.current
    # The inputs are left as they were.
    assert offsets(first, A) == [1, 2]


def test_merged_positions_are_the_latest_of_partitions_still_read_to_their_end() -> None:
    first = Fetch({}, live, {A: True, B: True}, generation=3, positions={A: 3, B: 7})
    second = Fetch({A: recs(3)}, live, {A: False, B: True}, generation=3, positions={B: 9})
    assert merged([first, second]).positions == {B: 9}


def test_stale_fetches_are_dropped_and_refetched_records_taken_once() -> None:
    old = Fetch({A: recs(1, 2, 3)}, stale, {A: False}, generation=1)
    new = Fetch({A: recs(2, 3)}, live, {A: False}, generation=2)
    newer = Fetch({A: recs(3, 4)}, live, {A: True}, generation=2)
    got = merged([old, new, newer])
    assert offsets(got, A) == [2, 3, 4]
    assert got.generation == 2
    # All stale: the newest is returned, and says so.
    gone = merged([old, Fetch({A: recs(4)}, stale)])
    assert not gone.current()


def test_take_merges_what_was_queued_up_to_the_record_limit() -> None:
    async def scenario() -> tuple[list[list[int]], bool]:
        queue = FetchQueue(maxsize=3)
        await queue.put(Fetch({A: recs(1, 2)}, live))
        await queue.put(Fetch({A: recs(3, 4)}, live))
        await queue.put(Fetch({A: recs(5, 6)}, live))
        # Full: the fetch loop waits until the task took something.
        blocked = asyncio.ensure_future(queue.put(Fetch({A: recs(7)}, live)))
        await asyncio.sleep(0)
        was_blocked = not blocked.done()
        taken = [offsets(await queue.take(most_records=4), A)]
        await asyncio.wait_for(blocked, 10)
        taken.append(offsets(await queue.take(most_records=4), A))
        assert len(queue) == 0
        return taken, was_blocked

    taken, was_blocked = asyncio.run(scenario())
    assert was_blocked
    assert taken == [[1, 2, 3, 4], [5, 6, 7]]


def test_a_fetch_larger_than_the_limit_is_taken_alone() -> None:
    async def scenario() -> list[list[int]]:
        queue = FetchQueue(maxsize=4)
        await queue.put(Fetch({A: recs(1, 2, 3)}, live))
        await queue.put(Fetch({A: recs(4)}, live))
        return [offsets(await queue.take(most_records=2), A) for _ in range(2)]

    assert asyncio.run(scenario()) == [[1, 2, 3], [4]]
