"""Faust's producer and transaction manager, adapted to one transaction per batch.

The transactional producers themselves stay Faust's (one per partition, fencing,
rebalancing); app/engine/transaction.py writes each batch through them. These two
classes are installed as the transport's ``Producer`` and ``TransactionManager`` by
app/engine/faust_app.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerDriver

log = logging.getLogger(__name__)


class BatchTransactionManager(TransactionManager):
    """Faust's transaction manager, minus its own offset commits.

    Every batch commits its offsets in its own transaction (:func:`commit`). Faust
    would also commit the offsets of *acknowledged* messages (on rebalance, on stop),
    and those lag a batch behind, so its commit could move a committed offset back
    and make the next worker redo work. Producers per partition, fencing and
    rebalancing stay Faust's. (tests/engine/test_upstream_offset_commits.py shows it on
    Faust's own manager.)
    """

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        return False


class BatchProducer(AIOKafkaProducerDriver):
    """Faust's aiokafka producer, retrying transactional requests after 20 ms, not 100.

    A transaction that starts right after the previous one of its producer committed
    often finds the coordinator still writing the commit markers and is told
    CONCURRENT_TRANSACTIONS; aiokafka then waits its retry backoff. With the default
    100 ms, a third of the ingest transactions waited that long (the Java client uses
    20 ms for the same reason).
    """

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "retry_backoff_ms": 20}

    async def flush(self) -> None:
        """Faust's flush (on stop and on every rebalance), minus waiting on the
        transactional producers, and bounded.

        Every record of a batch is awaited before its commit, so whatever a
        transactional producer still holds belongs to a transaction that will not
        commit; Faust's flush waited for it to be delivered, which with the broker gone
        never happens (a SIGTERM during an outage hung there).
        """
        await self.buffer.flush()
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.flush(), FLUSH_TIMEOUT_S)
            except TimeoutError:
                log.warning("Producer flush gave up after %.0f s", FLUSH_TIMEOUT_S)


FLUSH_TIMEOUT_S = 2.0
