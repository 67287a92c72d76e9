"""Rebuilding a partition of the tables from their changelogs, read_committed.

A worker does this before it processes a partition it was just given. Faust recovers
tables too, but only the partitions its assignor calls active and up to end offsets it
reads once: right after a SIGKILL its view can be wrong (we saw it read every changelog
as empty while a dead worker's transaction was still open, and start from nothing). So
the agents that keep state restore their own partitions here, and wait first until no
transaction is open on those changelogs, so what they read is exactly what was
committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from tables.base import items, put

log = logging.getLogger(__name__)


async def restore_partition(
    tables: Sequence[Any], partition: int, bootstrap: str, *, stable_timeout_s: float = 90.0
) -> int:
    """Replace the local state of ``partition`` of each table with its changelog's.

    Returns the number of changelog records applied.
    """
    by_tp = {TopicPartition(t.changelog_topic.get_topic_name(), partition): t for t in tables}
    tps = list(by_tp)
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await asyncio.gather(reader.start(), probe.start())
    try:
        # Learn every changelog's metadata in one request: end_offsets() would find the
        # topics unknown one at a time and wait the retry backoff (100 ms) for each,
        # about 1.2 s for the six tables, twice.
        names = sorted({tp.topic for tp in tps})
        await asyncio.gather(reader._client.set_topics(names), probe._client.set_topics(names))
        end = await _stable_end_offsets(reader, probe, tps, stable_timeout_s)
        for table in tables:
            for key, _ in list(items(table, partition)):
                put(table, key, None, partition)
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        pending = {tp for tp in tps if end[tp] > 0}
        applied = 0
        idle_polls = 0
        while pending and idle_polls < 5:
            fetched = await reader.getmany(*pending, timeout_ms=200)
            # A changelog can end in aborted records and markers, which a read_committed
            # fetch skips without moving the position: nothing more is coming.
            idle_polls = 0 if fetched else idle_polls + 1
            for tp, records in fetched.items():
                table = by_tp[tp]
                for record in records:
                    if record.offset < end[tp]:
                        put(table, record.key, record.value, partition)
                        applied += 1
            for tp in list(pending):
                if await reader.position(tp) >= end[tp]:
                    pending.discard(tp)
        return applied
    finally:
        await asyncio.gather(reader.stop(), probe.stop())


async def _stable_end_offsets(
    reader: AIOKafkaConsumer, probe: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int]:
    """The last stable offsets once they equal the high watermarks (no open transaction).

    A worker killed mid-batch leaves its transaction open until its successor's producer
    fences it; reading before that would stop short of later committed data.
    """
    deadline = time.monotonic() + timeout_s
    next_log = time.monotonic() + 5
    while True:
        stable = await reader.end_offsets(tps)
        high = await probe.end_offsets(tps)
        if stable == high:
            return dict(stable)
        if time.monotonic() > next_log:
            next_log += 5
            waiting = {
                f"{tp.topic}/{tp.partition}": (stable[tp], high[tp])
                for tp in tps
                if stable[tp] != high[tp]
            }
            log.info("Waiting for open transactions to end before restoring: %s", waiting)
        if time.monotonic() > deadline:
            log.warning("Changelogs still have open transactions; restoring what is stable")
            return dict(stable)
        await asyncio.sleep(0.2)
