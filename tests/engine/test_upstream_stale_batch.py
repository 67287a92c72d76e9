"""Faust bug: after a seek while a fetch is being handed on, the re-read records are
dropped as "already read".

Upstream: ``faust/transport/consumer.py``. ``Consumer.seek`` moves the fetch position
and sets the partition's read offset to the target, but ``Consumer.getmany`` goes on
handing on the rest of the fetch it already had, and ``Consumer._drain_messages`` sets
the read offset to each record it hands on: the read offset runs *ahead* of the new
position, and the records fetched again from there are dropped as below it (Faust logs
``DROPPED MESSAGE ROFF`` at dev level). Faust's recovery seeks the stream partitions to
their committed offsets while the drain loop may still be handing on a fetch.

Ours: ``app/engine/consumer.py``, ``GaplessConsumer``: every seek marks its partition, a
partition sought while its fetch is handed on gets none of the rest of that fetch, and
its read offset is put back where the seek put it (module docstring, item 2); its
``seek_to_committed`` marks every partition as soon as the positions move. Shown for a
plain ``seek`` and for Faust's ``perform_seek`` to the committed offsets (what its
recovery calls).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from app.engine.consumer import GaplessConsumer
from tests.engine.faust_harness import (
    Drain,
    bare_app,
    consumer_on_loop,
    create_topic,
    kafka_client,
    produce_one_batch,
    upstream_fixed,
    wait_until,
)
from tests.integration.harness import unique

pytestmark = pytest.mark.integration

RECORDS = 10
"""Written as one record batch: the first fetch returns all of them."""
SOUGHT_AT = 5
"""The seek happens while this record is being handed on..."""
SOUGHT_TO = 3
"""...and moves the partition back to this offset (say, its committed offset)."""


async def seek_directly(consumer: Any, tp: TP) -> None:
    await consumer.seek(tp, SOUGHT_TO)


async def seek_to_committed(consumer: Any, tp: TP) -> None:
    """What Faust's recovery does once it is done: seek every partition to the group's
    committed offset (``Consumer.perform_seek``)."""
    await kafka_client(consumer).commit({TopicPartition(tp.topic, tp.partition): SOUGHT_TO})
    await consumer.perform_seek()


SEEKS = {"seek": seek_directly, "perform_seek": seek_to_committed}


async def hand_on_with_a_seek(consumer_class: type[Any], how: str, kafka: str) -> list[int]:
    """The offsets Faust's drain loop hands on when the partition is sought back to
    SOUGHT_TO (``how``: one of SEEKS) while the record at SOUGHT_AT is being handed on;
    then one more record is written and read."""
    topic = unique("sought")
    await create_topic(kafka, topic)
    await produce_one_batch(kafka, topic, [b"%d" % i for i in range(RECORDS)])
    tp = TP(topic, 0)
    drain = Drain()
    async with consumer_on_loop(consumer_class, bare_app(kafka), [tp], drain) as consumer:
        sought: list[bool] = []

        async def seek(message: Any) -> None:
            await SEEKS[how](consumer, tp)
            sought.append(True)

        drain.at(SOUGHT_AT, seek)
        await wait_until(lambda: bool(sought), "the seek")
        await produce_one_batch(kafka, topic, [b"last"])
        await wait_until(lambda: RECORDS in drain.offsets, "the record written last")
    return drain.offsets


@pytest.mark.parametrize("how", SEEKS)
async def test_stock_faust_drops_the_records_read_again_after_a_seek(kafka: str, how: str) -> None:
    seen = await hand_on_with_a_seek(FaustConsumer, how, kafka)
    # The stale rest of the fetch (6..9) went on; 3..8 read again were dropped.
    stale = [*range(SOUGHT_AT + 1), *range(SOUGHT_AT + 1, RECORDS), RECORDS - 1, RECORDS]
    assert seen == stale, upstream_fixed(
        f"a stale batch delivered after a {how} (Consumer.getmany/_drain_messages)",
        "app.engine.consumer.GaplessConsumer's seek marks",
        seen,
    )


@pytest.mark.parametrize("how", SEEKS)
async def test_gapless_consumer_hands_on_from_where_the_seek_put_it(
    kafka: str, how: str, engine_state: None
) -> None:
    seen = await hand_on_with_a_seek(GaplessConsumer, how, kafka)
    assert seen == [*range(SOUGHT_AT + 1), *range(SOUGHT_TO, RECORDS + 1)]
