"""Between a rebalance's revocation and its new assignment nothing counts as owned, and
whatever was restored meanwhile is void at the assignment.

The regression (a CI log, test_static_membership): a worker's recovery of the previous
assignment finished just after the next rebalance had revoked everything, resumed the
flow, and the direct join restored all four partitions while the consumer still listed
them; two of them had gone to the other worker. They stayed restored, so ``/stats``
counted them twice (this worker's copy was its standby replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from faust.types import TP

from agents import partition_runtime, tracker
from app.engine import consumer as engine_consumer
from app.engine import restore, transaction
from app.engine.instance import app

TOPIC = tracker.restorer.topic


@pytest.fixture
def fresh_restorer() -> Iterator[Any]:
    r = tracker.restorer
    saved = (set(r._ready), dict(r._generation), dict(r._locks))
    r._ready.clear()
    yield r
    r._ready.clear()
    r._ready.update(saved[0])
    r._generation.clear()
    r._generation.update(saved[1])
    r._locks.clear()
    r._locks.update(saved[2])


def test_the_consumer_is_rebalancing_from_the_revocation_to_the_end_of_the_assignment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer: Any = app.consumer
    seen: list[tuple[str, bool]] = []

    async def revoked(partitions: set[TP]) -> None:
        seen.append(("revoked", engine_consumer.rebalancing()))

    async def assigned(partitions: set[TP], generation_id: int = 0) -> None:
        # Faust starts the transactional producers and sends its signal in here.
        seen.append(("assigned", engine_consumer.rebalancing()))

    monkeypatch.setattr(consumer, "_on_partitions_revoked", revoked)
    monkeypatch.setattr(consumer, "_on_partitions_assigned", assigned)
    monkeypatch.setattr(app, "on_rebalance_return", lambda: None)
    assert not engine_consumer.rebalancing()

    async def rebalance() -> None:
        await consumer.on_partitions_revoked({TP(TOPIC, 0)})
        assert engine_consumer.rebalancing()
        await consumer.on_partitions_assigned({TP(TOPIC, 1)}, 2)

    asyncio.run(rebalance())
    assert seen == [("revoked", True), ("assigned", True)]
    assert not engine_consumer.rebalancing()


def test_nothing_is_owned_while_rebalancing(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer: Any = app.consumer
    tp = TP(TOPIC, 0)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(app, "in_transaction", False)
    assert transaction.owned(tp) and transaction.can_commit(tp)
    # Even with the flow resumed (a late recovery of the previous assignment does that).
    monkeypatch.setattr(consumer, "rebalancing", True)
    assert not transaction.owned(tp)
    assert not transaction.can_commit(tp)


def test_what_was_restored_during_a_rebalance_is_void_at_the_assignment(
    fresh_restorer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    restorer = fresh_restorer
    gates: dict[int, asyncio.Event] = {}
    restored: list[int] = []

    async def fake_restore(tables: Any, partition: int, bootstrap: str) -> restore.Restored:
        gate = gates.setdefault(partition, asyncio.Event())
        await gate.wait()
        restored.append(partition)
        return restore.Restored()

    monkeypatch.setattr(restore, "restore_partition", fake_restore)

    async def scenario() -> None:
        # The revocation forgets everything; then, still in the rebalance, partition 1
        # gets restored completely and partitions 0 and 2 start restoring.
        restorer.forget([0, 1, 2, 3])
        gates[1] = asyncio.Event()
        gates[1].set()
        assert await restorer.ensure(1)
        assert 1 in partition_runtime.runtimes
        early = [asyncio.ensure_future(restorer.ensure(p)) for p in (0, 2)]
        await asyncio.sleep(0.01)
        # The assignment: 2 and 3 are this worker's, 0 and 1 went elsewhere.
        await partition_runtime._on_assigned(None, {TP(TOPIC, 2), TP(TOPIC, 3)})
        assert restorer.ready_partitions() == set()
        assert 1 not in partition_runtime.runtimes
        for p in (0, 2, 3):
            gates.setdefault(p, asyncio.Event()).set()
        assert await asyncio.gather(*early) == [False, False]  # void, whatever they read
        for _ in range(100):
            if restorer.ready_partitions() == {2, 3}:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert restorer.ready_partitions() == {2, 3}
    assert set(partition_runtime.runtimes) == {2, 3}
    # Partition 2 was restored again after the assignment, not taken from before it.
    assert sorted(restored) == [0, 1, 2, 2, 3]
