"""How a retried commit that carries no offsets tells whether an earlier attempt landed
(app/engine/transaction.py, ``_landed``), on a real broker: the last *committed* value
of the batch's key holds its token, however far back it is, whatever aborted attempts
and other keys came after it."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from app.engine import transaction
from tests.engine.faust_harness import create_topic
from tests.integration.harness import unique

pytestmark = pytest.mark.integration

KEY = b"p0"


async def write(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], commit: bool
) -> None:
    """``records`` in one transaction of a producer of its own, committed or aborted."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("tx"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=0)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def test_the_last_committed_value_of_the_key_tells(kafka: str) -> None:
    topic = unique("landed")
    await create_topic(kafka, topic)

    async def landed(token: bytes, key: bytes = KEY) -> bool:
        return await transaction._landed(topic, 0, key, token, bootstrap=kafka)

    assert not await landed(b"tok-1")  # nothing written at all
    await write(kafka, topic, [(b"sku-a", b"{}"), (KEY, b'{"commit":"tok-1"}')], commit=True)
    assert await landed(b"tok-1")
    # An attempt that was aborted (its producer fenced) did not land; the one before it
    # is still the last committed value.
    await write(kafka, topic, [(KEY, b'{"commit":"tok-2"}'), (b"sku-b", b"{}")], commit=False)
    assert not await landed(b"tok-2")
    assert await landed(b"tok-1")
    # Far back: more records of other keys after it than the first look back reads.
    others = [(b"sku-%d" % i, b"{}") for i in range(3 * transaction.LANDED_LOOK_BACK)]
    await write(kafka, topic, others, commit=True)
    assert await landed(b"tok-1")
    await write(kafka, topic, [(KEY, b'{"commit":"tok-3"}')], commit=True)
    assert await landed(b"tok-3")
    assert not await landed(b"tok-1")
    assert not await landed(b"tok-1", key=b"p1")  # a key never written
