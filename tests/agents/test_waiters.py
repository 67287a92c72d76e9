"""Read your own writes: the waiter registry, and the tracker's commit waking it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents import tracker
from agents.waiters import TooManyWaiting, Waiters
from app.engine.transaction import Batch
from tables import order_status, sku_state


async def test_a_waiter_wakes_on_a_commit_of_its_key_only() -> None:
    waiters = Waiters(limit=10)
    with waiters.waiting(b"o1") as first, waiters.waiting(b"o2") as second:
        assert len(waiters) == 2
        waiters.notify([b"o3", b"o1"])
        assert first.done() and not second.done()
    assert len(waiters) == 0
    waiters.notify([b"o2"])  # nobody waits any more: nothing to do, no error


async def test_past_the_limit_a_request_is_refused_and_a_slot_frees_on_exit() -> None:
    waiters = Waiters(limit=2)
    with (
        waiters.waiting(b"a"),
        waiters.waiting(b"a"),
        pytest.raises(TooManyWaiting, match="MAX_WAITING_REQUESTS=2"),
        waiters.waiting(b"b"),
    ):
        pass  # pragma: no cover
    with waiters.waiting(b"b") as future:
        assert not future.done()


async def test_the_trackers_commit_path_wakes_waiters_of_the_orders_it_wrote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiters = Waiters(limit=10)
    monkeypatch.setattr(tracker.waiters, "orders", waiters)
    batch = Batch(table_partition=0)
    batch.put(order_status, b"o1", b"{}")
    batch.put(sku_state, b"o2", b"{}")  # same key text, another table: not an order
    with waiters.waiting(b"o1") as o1, waiters.waiting(b"o2") as o2:
        tracker.notify_waiters(batch)
        await asyncio.wait_for(o1, 1)
        assert not o2.done()


async def test_a_waiting_request_answers_on_the_commit_or_404s_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import orjson

    from app.engine.stores import put
    from app.serving import web

    waiters = Waiters(limit=1)
    monkeypatch.setattr(web.waiters, "orders", waiters)
    request = SimpleNamespace(path_qs="/orders/o1?wait=5")

    async def commit_later() -> None:
        await asyncio.sleep(0.05)
        put(order_status, b"o1", orjson.dumps({"order_id": "o1"}), 0)
        batch = Batch(table_partition=0)
        batch.put(order_status, b"o1", b"{}")
        tracker.notify_waiters(batch)

    monkeypatch.setattr(tracker.waiters, "orders", waiters)
    committer = asyncio.ensure_future(commit_later())
    answer = await web.wait_for_order(request, "o1", 5.0, [])
    await committer
    assert (answer.status, orjson.loads(answer.body)) == (200, {"order_id": "o1"})
    assert len(waiters) == 0

    missing = await web.wait_for_order(request, "o2", 0.05, [])
    assert missing.status == 404 and b"waited 0.05 s" in missing.body

    with waiters.waiting(b"other"):
        full = await web.wait_for_order(request, "o3", 5.0, [])
    assert full.status == 503 and b"MAX_WAITING_REQUESTS=1" in full.body
