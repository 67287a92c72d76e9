"""Faust bug: the records of a partition paused while its fetch is handed on are lost.

Upstream: ``faust/transport/consumer.py``, ``Consumer.getmany`` hands on a fetched
record only if its partition is active at that moment, and skips it otherwise; by then
aiokafka's fetch position is already past the whole fetch, and nothing seeks back
(``Consumer._drain_messages`` only drops records below the read offset). Faust pauses
partitions this way on every rebalance (``App._on_partitions_revoked`` pauses the whole
assignment, ``Recovery`` the partitions it recovers), so the rest of a fetch that was
being handed on is never read again, and the next offset committed for the partition
passes it.

Ours: ``app/engine/consumer.py``, ``GaplessConsumer.getmany``: a partition whose records were
held back because it was not active is sought back to the first of them once the fetch
is handed on (module docstring, item 1).
"""

from __future__ import annotations

from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from app.engine.consumer import GaplessConsumer
from tests.engine.faust_harness import (
    Drain,
    bare_app,
    consumer_on_loop,
    create_topic,
    produce_one_batch,
    upstream_fixed,
    wait_until,
)
from tests.integration.harness import unique

pytestmark = pytest.mark.integration

RECORDS = 10
"""Written as one record batch: the first fetch returns all of them."""


async def hand_on_with_a_pause(consumer_class: type[Any], kafka: str) -> list[int]:
    """The offsets Faust's drain loop hands on when the partition is paused while the
    first record of a fetch is being handed on and resumed before the next fetch, as a
    rebalance does; then one more record is written and read."""
    topic = unique("paused")
    await create_topic(kafka, topic)
    await produce_one_batch(kafka, topic, [b"%d" % i for i in range(RECORDS)])
    tp = TP(topic, 0)
    drain = Drain()
    async with consumer_on_loop(consumer_class, bare_app(kafka), [tp], drain) as consumer:
        resumed: list[bool] = []

        def resume() -> None:
            consumer.resume_partitions([tp])
            resumed.append(True)

        async def pause(message: Any) -> None:
            consumer.pause_partitions([tp])
            drain.before_next_fetch(resume)

        drain.at(0, pause)
        await wait_until(lambda: bool(resumed), "the partition to be resumed")
        # A record written only now cannot be part of the paused fetch.
        await produce_one_batch(kafka, topic, [b"last"])
        await wait_until(lambda: RECORDS in drain.offsets, "the record written last")
    return drain.offsets


async def test_stock_faust_loses_the_rest_of_a_paused_fetch(kafka: str) -> None:
    seen = await hand_on_with_a_pause(FaustConsumer, kafka)
    assert seen == [0, RECORDS], upstream_fixed(
        "records of a paused partition dropped (Consumer.getmany)",
        "app.engine.consumer.GaplessConsumer's seek back to held-back records",
        seen,
    )


async def test_gapless_consumer_reads_them_again(kafka: str, engine_state: None) -> None:
    seen = await hand_on_with_a_pause(GaplessConsumer, kafka)
    assert seen == list(range(RECORDS + 1))
