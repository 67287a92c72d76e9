"""Faust bug: table recovery reads a changelog as empty while a transaction on it is open.

Upstream: ``faust/tables/recovery.py``, ``Recovery._build_highwaters`` takes the end of
each changelog partition from ``consumer.highwaters``, which with ``exactly_once``
(``faust/transport/drivers/aiokafka.py``, ``AIOKafkaConsumerThread._highwaters``) is
the read_committed consumer's *last stable offset* as its last fetch saw it: the first
offset of the oldest open transaction. Right after a SIGKILL the dead worker's
transaction stays open until a producer of its id fences it, so everything committed
after that transaction began (or, before any fetch, everything) is out of Faust's
recovery, and a restarted worker starts from nothing or from stale values.

Ours: ``app/engine/restore.py``, ``restore_partition`` (with ``stable_end_offsets``): it
waits until the read_committed end of every changelog partition equals its high
watermark (no transaction open on it), then reads to that end; Faust's own pass is
turned off (``OwnRestoreRecovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from app.engine import restore
from app.engine.stores import items
from tests.engine.faust_harness import (
    TIMEOUT_S,
    bare_app,
    complete_transactions,
    consumer_on_loop,
    create_topic,
    internal,
    kafka_client,
    upstream_fixed,
    wait_until,
)
from tests.integration.harness import unique

pytestmark = pytest.mark.integration

COMMITTED = {b"sku-1": b"level 7", b"sku-2": b"level 3"}
"""What the changelog holds once the open transaction ends (it is aborted)."""


@contextlib.asynccontextmanager
async def changelog_with_an_open_transaction(kafka: str) -> AsyncIterator[tuple[Any, str]]:
    """A table of a bare app whose changelog starts with a record of a transaction left
    open (a worker killed mid-batch), followed by COMMITTED, committed by another
    producer; yields the table and the open transaction's producer id."""
    app = bare_app(kafka, exactly_once=True)
    table = app.Table("levels", partitions=1, key_type=bytes, value_type=bytes)
    changelog = table.changelog_topic.get_topic_name()
    await create_topic(kafka, changelog)
    dead_id = unique("dead")
    # The broker would abort it after the transaction timeout: longer than any test.
    dead = AIOKafkaProducer(
        bootstrap_servers=kafka, transactional_id=dead_id, transaction_timeout_ms=900_000
    )
    await dead.start()
    try:
        await dead.begin_transaction()
        await dead.send_and_wait(changelog, b"never committed", key=b"sku-1", partition=0)
        live = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=unique("live"))
        await live.start()
        try:
            async with live.transaction():
                for key, value in COMMITTED.items():
                    await live.send(changelog, value, key=key, partition=0)
        finally:
            await live.stop()
        yield table, dead_id
    finally:
        with contextlib.suppress(Exception):
            await dead.stop()


async def test_stock_faust_recovery_reads_the_changelog_as_empty(kafka: str) -> None:
    async with changelog_with_an_open_transaction(kafka) as (table, _):
        app = table.app
        tp = TP(table.changelog_topic.get_topic_name(), 0)
        async with consumer_on_loop(FaustConsumer, app, [tp]) as consumer:
            client = kafka_client(consumer)
            # Faust reads whatever the last fetch saw; wait for one, so the open
            # transaction (not a missing fetch) is what Faust's end offset shows.
            await wait_until(
                lambda: client.last_stable_offset(tp) is not None, "a fetch of the changelog"
            )
            # The same fetch saw the committed records: the log goes on past them.
            assert client.highwater(tp) > len(COMMITTED)
            highwaters: Counter[TP] = Counter()
            build_highwaters = internal(app.tables.recovery, "_build_highwaters")
            await build_highwaters(consumer, {tp}, highwaters, "active")
    # Faust restores the offsets up to and including its highwater: -1 is none at all.
    assert highwaters[tp] == -1, upstream_fixed(
        "its recovery reading empty changelogs while a transaction is open "
        "(Recovery._build_highwaters)",
        "app.engine.restore.OwnRestoreRecovery and restore_partition's wait",
        f"highwater {highwaters[tp]}",
    )


async def test_restore_partition_waits_for_the_transaction_to_end(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with changelog_with_an_open_transaction(kafka) as (table, dead_id):
        tp = TP(table.changelog_topic.get_topic_name(), 0)
        first_ends: list[dict[Any, int]] = []
        read_once = asyncio.Event()
        stable_end_offsets = restore.stable_end_offsets

        async def observed(reader: Any, *args: Any) -> Any:
            end_offsets = reader.end_offsets

            async def recorded(partitions: Any) -> Any:
                found = await end_offsets(partitions)
                first_ends.append(dict(found))
                read_once.set()
                return found

            reader.end_offsets = recorded
            return await stable_end_offsets(reader, *args)

        monkeypatch.setattr(restore, "stable_end_offsets", observed)
        restoring = asyncio.ensure_future(restore.restore_partition([table], 0, kafka))
        try:
            # The restore reads the changelog's read_committed end while the transaction
            # is open (where Faust's recovery stops)...
            await asyncio.wait_for(read_once.wait(), TIMEOUT_S)
            assert first_ends[0] == {tp: 0}
            # ...which it stays until the dead worker's successor starts a producer of its
            # id (which aborts it).
            await complete_transactions(kafka, dead_id)
            applied = await asyncio.wait_for(restoring, TIMEOUT_S)
        finally:
            restoring.cancel()
        assert dict(items(table, 0)) == COMMITTED
        assert applied.records == len(COMMITTED)
