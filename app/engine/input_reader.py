"""The direct join's reader: every partition of the input topics, outside the group.

With ``JOIN_READ=direct`` each worker reads every input partition itself and applies
the events of the SKU partitions it owns (agents/direct.py): one transactional hop from
an order to its status instead of two. Such a reader is not a group member. Where it
reads each partition is decided by the tracker's own state (the offsets its last
commits recorded), so it seeks; nothing is committed for it to the group.

This module owns the aiokafka consumer that does it and the two facts the join needs
from it beyond the records: the position of each partition (every offset below it
handed on, transaction markers included) and whether the partition is read to the end
the broker held at the last fetch (the last stable offset: records of open
transactions are not yet readable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from app.engine import metrics
from app.engine.consumer import FETCH_MAX_WAIT_MS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Read:
    """One fetch of the input partitions."""

    records: dict[TP, list[Any]] = field(default_factory=dict)
    """Per partition, its records in offset order (aiokafka ConsumerRecords)."""
    positions: dict[TP, int] = field(default_factory=dict)
    """Per partition with a known position: the next offset it will hand on."""
    at_end: dict[TP, bool] = field(default_factory=dict)
    """Per partition: read to the end the broker held at the last fetch (read_committed)."""


class InputReader:
    """An aiokafka consumer assigned every partition of ``topics`` (read_committed)."""

    def __init__(self, bootstrap: str, topics: Iterable[str], max_records: int) -> None:
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._paused: set[TopicPartition] = set()
        self._lag: dict[TP, int] = {}
        self._unregister: Callable[[], None] | None = None

    async def start(self, partitions: Mapping[str, int]) -> None:
        """Start reading: ``partitions`` is the partition count of each topic. Every
        partition starts paused; :meth:`seek` places and resumes it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=1 << 20,
        )
        await consumer.start()
        tps = [TopicPartition(t, p) for t in self.topics for p in range(partitions[t])]
        consumer.assign(tps)
        consumer.pause(*tps)
        self._paused = set(tps)
        self._consumer = consumer
        self._unregister = metrics.lag_source(lambda: self._lag)

    async def stop(self) -> None:
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        self._lag = {}
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def seek(self, tp: TP, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (the earliest record kept, if it is gone)."""
        assert self._consumer is not None
        atp = TopicPartition(tp.topic, tp.partition)
        self._consumer.seek(atp, offset)
        if atp in self._paused:
            self._paused.discard(atp)
            self._consumer.resume(atp)

    async def read(self, timeout_s: float) -> Read:
        """The records fetched since the last call (waiting up to ``timeout_s`` for
        some), with every partition's position and end."""
        consumer = self._consumer
        assert consumer is not None
        fetched = await consumer.getmany(
            timeout_ms=int(timeout_s * 1000), max_records=self.max_records
        )
        read = Read({TP(tp.topic, tp.partition): recs for tp, recs in fetched.items()})
        self._ends(read)
        return read

    def _ends(self, read: Read) -> None:
        # aiokafka's per-partition state, written by the fetcher as records are handed
        # out: position is past every record (and marker) returned so far.
        consumer: Any = self._consumer
        assignment = consumer._subscription.subscription
        states = None if assignment is None else assignment.assignment
        if states is None:
            return
        for atp in consumer.assignment():
            if atp in self._paused:
                continue
            try:
                state = states.state_value(atp)
            except (KeyError, AssertionError):  # pragma: no cover - unassigned meanwhile
                continue
            if state is None or not state.has_valid_position:
                continue
            tp = TP(atp.topic, atp.partition)
            read.positions[tp] = state.position
            end = state.lso
            known = end is not None and end >= 0
            read.at_end[tp] = known and state.position >= end
            if known:
                self._lag[tp] = max(end - state.position, 0)
