"""Faust bug (for the engine's batches): Faust's own offset commits lag a batch and can
move a committed offset back.

Upstream: ``faust/transport/consumer.py``. On stop (``Consumer.on_stop`` ->
``commit_and_end_transactions``), on rebalance and on its commit timer, Faust commits for
each partition the offset after the last message its streams *acknowledged*, compared
only with what Faust itself committed before (``Consumer._filter_committable_offsets``,
``_should_commit``); with ``exactly_once`` it does so through
``TransactionManager.commit``, which sends those offsets in a transaction of the
partition's producer. The engine commits each batch's input offsets in the batch's own
transaction (app/engine/transaction.py), which Faust knows nothing about, so acknowledgements
that lag a batch behind make Faust commit an older offset over the batch's, and the
partition's next owner redoes (or, for outputs already committed, duplicates) work.

Ours: ``app/engine/producer.py``, ``BatchTransactionManager``: Faust's transaction manager
with ``commit`` doing nothing (producers per partition, fencing and rebalancing stay
Faust's).
"""

from __future__ import annotations

from typing import Any

import pytest
from faust.transport.consumer import TransactionManager as FaustTransactionManager
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from app.engine.producer import BatchTransactionManager
from tests.engine.faust_harness import (
    Drain,
    bare_app,
    commit_in_transaction,
    committed_offset,
    complete_transactions,
    consumer_on_loop,
    create_topic,
    internal,
    produce_one_batch,
    upstream_fixed,
    wait_until,
)
from tests.integration.harness import unique

pytestmark = pytest.mark.integration

RECORDS = 10
ACKED = 4
"""Faust's streams acknowledged the messages before this offset; a batch of all RECORDS
committed RECORDS."""


async def stop_after_a_batch(manager_class: type[Any], kafka: str) -> int | None:
    """The group's committed offset after a batch committed RECORDS in its own
    transaction and then Faust, with ``manager_class``, ran its commit on stop while
    its streams had acknowledged the messages up to ACKED."""
    topic = unique("lagging")
    await create_topic(kafka, topic)
    await produce_one_batch(kafka, topic, [b"%d" % i for i in range(RECORDS)])
    tp = TP(topic, 0)
    app = bare_app(kafka, exactly_once=True)
    # As app/main.py installs ours.
    app.transport.TransactionManager = manager_class
    # Faust acknowledges (and commits) only the messages of topics its conductor has
    # subscribed, and names a partition's transactional producer after the topic's group,
    # which the group's assignment tells the assignor; no group is joined here.
    app.topics.add(app.topic(topic))
    await internal(app.topics, "_update_indices")()
    internal(app.assignor, "_topic_groups")[topic] = 0
    producer_id = f"{app.conf.id}-0-{tp.partition}"
    await app.producer.start()
    drain = Drain()
    try:
        async with consumer_on_loop(FaustConsumer, app, [tp], drain) as consumer:
            await wait_until(lambda: len(drain.offsets) == RECORDS, "the records")
            # As on assignment: Faust starts the partition's transactional producer.
            await consumer.transactions.on_rebalance({tp}, set(), {tp})
            for message in drain.messages[:ACKED]:
                consumer.track_message(message)
                consumer.ack(message)
            await commit_in_transaction(kafka, unique("batch"), app.conf.id, {tp: RECORDS})
            assert await committed_offset(kafka, app.conf.id, tp) == RECORDS
            assert consumer.in_transaction
            await consumer.commit_and_end_transactions()
            await consumer.transactions.on_rebalance(set(), {tp}, set())
    finally:
        await app.producer.stop()
    await complete_transactions(kafka, producer_id)
    return await committed_offset(kafka, app.conf.id, tp)


async def test_stock_faust_commits_its_lagging_offset_over_the_batchs(kafka: str) -> None:
    committed = await stop_after_a_batch(FaustTransactionManager, kafka)
    assert committed == ACKED, upstream_fixed(
        "Faust's own offset commits lagging a batch (TransactionManager.commit)",
        "app.engine.producer.BatchTransactionManager",
        f"committed offset {committed}",
    )


async def test_batch_transaction_manager_keeps_the_batchs_offset(kafka: str) -> None:
    assert await stop_after_a_batch(BatchTransactionManager, kafka) == RECORDS
