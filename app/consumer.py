"""Faust's aiokafka consumer, minus a way to lose messages, plus a batch tap.

Faust's ``Consumer.getmany`` fetches a batch of records, then hands them to the streams
one by one. Records of a partition that is not active at that moment (paused for table
recovery or a rebalance) are skipped, and the iteration stops early when the flow is
stopped or the generation changes, yet the fetch position stays *after* the skipped
records. Unless something seeks back, they are never read again, and the next batch of
that partition commits an offset past them. We saw exactly that in the crash test: a
worker restarted after SIGKILL lost about twenty orders per partition.

Here a partition whose records were held back because it was paused is sought back to
the first of them once the batch is handed on, so the next fetch starts there again
(a stopped flow or a new generation is left to Faust, which then seeks every partition
to its committed offset).

**The batch tap.** Faust turns every record into a ``Message``, routes it through the
conductor into a stream queue, wakes the agent, and tracks its ack; we measured that
machinery alone capping a worker near 3.8k messages/s, and the app needs none of it for
its own batch agents: they commit their input offsets in their own transactions
(app/transaction.py), so Faust's ack and gap tracking only costs time (its gap tree
for a transactional topic is never trimmed, since Faust never commits, and grew with
every batch). So the records of a *tapped* topic (see :func:`tap`) are not turned into
messages: the handler registered for the topic gets, once per fetch, every record of
it grouped per partition as lists of raw aiokafka ``ConsumerRecord`` in offset order.
The same rules hold for them as for messages: nothing of a partition that is not
active, nothing after a held-back record, nothing once the flow stopped or the
generation changed (the handler can ask with the ``current`` callable it is given, after
any await), and the next fetch waits until the handler returned, so batches of one
partition never overlap (a handler that passes records on to a task of its own, as the
tracker does, keeps them in order there). Everything else is Faust's code unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

Records = Mapping[TP, Sequence[Any]]
"""Input partition -> its fetched aiokafka ``ConsumerRecord`` objects, in offset order."""
BatchHandler = Callable[[Records, Callable[[], bool]], Awaitable[None]]
"""``handler(records, current)``; ``current()`` is False once the records went stale."""

_taps: dict[str, BatchHandler] = {}


def tap(topic: str, handler: BatchHandler) -> None:
    """Deliver the records of ``topic`` to ``handler`` in batches instead of streams.

    The topic must still be subscribed (``app.topics.add``); no stream sees its records.
    """
    _taps[topic] = handler


class GaplessConsumer(AIOKafkaConsumer):
    """A consumer whose fetch position never passes a record it did not deliver."""

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # As Faust does: the flow stopped for a rebalance, so start again from the
            # committed offsets.
            await self.perform_seek()
            return

        def current() -> bool:
            return self.flow_active and self.app.consumer_generation_id == generation_id

        held_back: dict[TP, int] = {}
        tapped: dict[BatchHandler, dict[TP, Sequence[Any]]] = {}
        rest: dict[TP, Any] = {}
        buffered = self._buffered_partitions
        for tp, batch in records.items():
            handler = _taps.get(tp.topic)
            if handler is None:
                rest[tp] = batch
            elif not batch:
                continue
            elif active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                tapped.setdefault(handler, {})[tp] = batch
            else:
                held_back[tp] = batch[0].offset
        if tapped:
            # Handlers of different topics share nothing but the producers' locks.
            try:
                await asyncio.gather(*(handler(recs, current) for handler, recs in tapped.items()))
            except Exception as exc:
                # What a failed handler applied is unknown: stop the worker; a restart
                # resumes from the offsets committed with the last complete batch.
                await self.app.crash(exc)
                raise
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(rest):
            if not current():
                # A rebalance or stop: Faust seeks every partition to its committed offset
                # before the flow resumes, which re-reads whatever was not handed on.
                return
            if tp in held_back:
                continue  # keep each partition in order: nothing after a skipped record
            if active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            else:
                held_back[tp] = record.offset
        # Paused while its records waited: nothing else will ever re-read them.
        assigned = self.assignment()
        for tp, offset in held_back.items():
            if tp in assigned:
                await self.seek(tp, offset)
