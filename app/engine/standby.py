"""Warm standby replicas: this worker's copies of table partitions another worker processes.

With ``TABLE_STANDBY_REPLICAS`` = n, each changelog partition is also given to n workers
other than the one that processes it; each keeps its store partition of that table up to
date by tailing the changelog (read_committed) and writing every fetch with the position
it reaches, in one RocksDB write batch (app/engine/checkpoint.py), exactly as a restore does.
When the active worker dies and a standby's worker takes the partition over, its restore
(app/engine/restore.py) trusts that position and replays only the last few records.

*Which* worker holds which standby is Faust's assignor's decision
(``table_standby_replicas``): it already knows every member, never puts a standby on the
worker that processes the partition, spreads them and keeps them sticky across
rebalances, and it hands them out in the same group protocol as the active partitions,
so standbys always match the current generation. Our own placement would have to
re-implement all of that on top of the group (a second, unsynchronised view of who is
alive). *How* they are kept warm is ours: Faust's standby recovery reads them with the
main consumer and writes them with its own store calls, which know nothing of our
positions, of read_committed stable ends or of our batch taps; so
:class:`app.engine.restore.OwnRestoreRecovery` takes the standby partitions away from it
(they stay assigned but paused on the main consumer) and hands them to
:data:`replicas`, which reads them with a consumer of its own.

A standby partition is never written while it is active here: the set changes on every
rebalance before the new actives are restored, and a fetch is applied only if its
assignment is still the current one (the check and the write run without an await in
between).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.engine.checkpoint import Position
from app.engine.instance import app, settings
from app.engine.restore import (
    Restored,
    apply_fetched,
    changelog_facts,
    put_at,
    standbys_to,
    start_offsets,
)
from app.engine.stores import not_served

log = logging.getLogger(__name__)


class StandbyReplicas:
    """Tails the changelog partitions this worker holds as standbys into its stores."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.records = 0
        """Changelog records applied to standby partitions since the start."""
        self._wanted: dict[TopicPartition, Any] = {}
        self._version = 0
        self._changed = asyncio.Event()

    def assign(self, wanted: Mapping[TopicPartition, Any]) -> None:
        """Hold exactly ``wanted`` (changelog partition -> its table) from now on."""
        if dict(wanted) == self._wanted:
            return
        self._wanted = dict(wanted)
        self._version += 1
        self._changed.set()
        if wanted:
            log.info(
                "Standby replicas: %s",
                ", ".join(sorted(f"{tp.topic}/{tp.partition}" for tp in wanted)),
            )

    def holds(self) -> set[TopicPartition]:
        return set(self._wanted)

    async def _refresh(
        self,
        reader: AIOKafkaConsumer,
        wanted: Mapping[TopicPartition, Any],
        version: int,
        asked_at: float,
        cluster: str,
    ) -> None:
        """Record the position of every partition that is read to its end, with no
        transaction open, as of ``asked_at`` less :data:`FETCH_AGE_MARGIN_S` (the
        offsets that say so come from the consumer's latest fetch response, which the
        background fetcher renews every half second while the broker answers).

        The time recorded with a position is that of the last record applied; a
        partition that gets no writes for a day would otherwise look too old to trust
        (app/engine/checkpoint.py) and be rebuilt at its takeover.
        """
        for tp, table in wanted.items():
            stable, high = reader.last_stable_offset(tp), reader.highwater(tp)
            if stable is None or stable != high:
                continue
            position = await reader.position(tp)
            if self._version != version:
                return
            if position == stable:
                as_of = asked_at - FETCH_AGE_MARGIN_S
                put_at(table, tp.partition, [], Position(position, as_of, cluster, tp.topic))

    def partitions_of(self, table: Any) -> set[int]:
        """The partitions of ``table`` held here as standbys."""
        return {tp.partition for tp, held in self._wanted.items() if held is table}

    async def run(self) -> None:
        """Tail the current standby partitions for as long as the worker runs; a failure
        (the cluster gone) is retried with backoff and never stops the worker."""
        # Here, not at import: every table is declared once the app runs.
        for table in app.tables.values():
            not_served(table, partial(self.partitions_of, table))
        delay = 0.5
        while True:
            try:
                await self._tail()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Standby replicas: tailing failed, retrying: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _tail(self) -> None:
        """Tail one assignment of standby partitions until it changes."""
        if not self._wanted:
            await self._changed.wait()
        self._changed.clear()
        version, wanted = self._version, dict(self._wanted)
        if not wanted:
            return
        tps = list(wanted)
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await reader.start()
        try:
            names = sorted({tp.topic for tp in tps})
            await reader._client.set_topics(names)
            facts = await changelog_facts(self.bootstrap, names)
            end = await reader.end_offsets(tps)
            beginning = await reader.beginning_offsets(tps)
            if self._version != version:
                return
            done = Restored()
            start = start_offsets(wanted, beginning, end, facts, done)
            log.info(
                "Standby replicas: %d resumed from their recorded positions, %d rebuilt%s",
                len(done.reused),
                len(done.rebuilt),
                "".join(f"; {name}: {why}" for name, why in sorted(done.rebuilt)),
            )
            reader.assign(tps)
            for tp, offset in start.items():
                reader.seek(tp, offset)
            next_refresh = time.monotonic() + REFRESH_S
            while self._version == version:
                asked_at = time.time()
                fetched = await reader.getmany(timeout_ms=500)
                if self._version != version:
                    return
                for tp, records in fetched.items():
                    table = wanted.get(tp)
                    if table is not None:
                        self.records += apply_fetched(table, tp.partition, records, facts.cluster)
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + REFRESH_S
                    await self._refresh(reader, wanted, version, asked_at, facts.cluster)
        finally:
            await reader.stop()


REFRESH_S = 60.0
"""How often a caught-up standby partition records that it still is (see _refresh)."""
FETCH_AGE_MARGIN_S = 300.0


replicas = StandbyReplicas(settings.broker_host_ports)
"""The worker's standby replicas (assigned by :class:`app.engine.restore.OwnRestoreRecovery`)."""

standbys_to(replicas.assign)
app.task(replicas.run)
