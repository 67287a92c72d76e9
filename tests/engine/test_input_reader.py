"""The direct join's reader (app/engine/input_reader.py) on a real broker.

What the join relies on: every partition starts paused and is read from where it is
sought; the position it reports is past the records handed on *and* the commit marker
after them; a partition counts as read to its end once that position reaches the last
stable offset; its lag is what is left to read.
"""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from app.engine import metrics
from app.engine.input_reader import InputReader, Read
from tests.engine.faust_harness import create_topic
from tests.integration.harness import unique

pytestmark = pytest.mark.integration


async def read_until(reader: InputReader, done: object, timeout_s: float = 20.0) -> list[Read]:
    reads: list[Read] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reads.append(await reader.read(0.2))
        if callable(done) and done(reads):
            return reads
    raise AssertionError(f"not done after {timeout_s} s: {reads[-1] if reads else None}")


def offsets(reads: list[Read], tp: TP) -> list[int]:
    return [r.offset for read in reads for r in read.records.get(tp, [])]


async def test_the_reader_reads_from_where_it_is_sought_and_knows_when_it_is_at_the_end(
    kafka: str,
) -> None:
    topic = unique("input-reader")
    await create_topic(kafka, topic, 2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=unique("ir-txn"))
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send_and_wait(topic, b"v%d" % i, partition=0)
    finally:
        await producer.stop()
    tp0, tp1 = TP(topic, 0), TP(topic, 1)
    reader = InputReader(kafka, [topic], max_records=100)
    await reader.start({topic: 2})
    try:
        # Paused until sought: nothing is read, nothing is known.
        idle = await reader.read(0.3)
        assert idle.records == {} and idle.positions == {}

        reader.seek(tp0, 0)
        reader.seek(tp1, 0)
        reads = await read_until(
            reader, lambda rs: rs[-1].at_end.get(tp0) and rs[-1].at_end.get(tp1)
        )
        assert offsets(reads, tp0) == [0, 1, 2]
        last = reads[-1]
        # Past the three records and the transaction's commit marker at offset 3.
        assert last.positions == {tp0: 4, tp1: 0}
        # The reader's lag is part of /metrics (stock_tracker_consumer_lag).
        found = {dict(labels)["partition"]: v for labels, v in metrics.consumer_lag()}
        assert found.get("0") == 0.0

        # Sought back, it hands the records on again; not at the end until it is.
        reader.seek(tp0, 1)
        again = await read_until(reader, lambda rs: rs[-1].at_end.get(tp0))
        assert offsets(again, tp0) == [1, 2]
        assert again[-1].positions[tp0] == 4
    finally:
        await reader.stop()
    assert all(dict(labels)["topic"] != topic for labels, _ in metrics.consumer_lag())
