"""Faust's aiokafka consumer, minus two ways to lose messages.

Faust's ``Consumer.getmany`` fetches a batch of records, then hands them to the streams
one by one, and ``Consumer._drain_messages`` drops any record whose offset is below the
partition's in-memory *read offset* (the last offset it handed on, or where a seek put
it). Two things went wrong with that:

1. Records of a partition that is not active at that moment (paused for table recovery
   or a rebalance) are skipped, yet the fetch position stays *after* them. Unless
   something seeks back, they are never read again, and the next batch of that
   partition commits an offset past them. The crash test saw a restarted worker lose
   about twenty orders per partition.
2. A seek while a batch is being handed on (Faust's recovery resumes the stream
   partitions, then seeks them to their committed offsets, while the drain loop is
   still delivering what it fetched) leaves the rest of that batch stale: Faust goes on
   delivering it, moving the read offset *ahead* of the new position, and then drops
   the re-fetched records below it as "already read". A crash soak lost whole envelopes
   of the SKU-keyed topic this way (Faust's log: ``DROPPED MESSAGE ROFF``).

Here a partition whose records were held back because it was paused is sought back to
the first of them once the batch is handed on, and a partition sought while its batch
is being handed on gets none of the rest of that batch (its new position re-reads
them), so the read offset never runs ahead of the position. A stopped flow or a new
generation is left to Faust, which then seeks every partition to its committed offset.
Everything else is Faust's code unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message


class GaplessConsumer(AIOKafkaConsumer):
    """A consumer whose fetch position never passes a record it did not deliver."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._all_seeks = 0
        """Bumped by every seek of all partitions (``perform_seek``)."""
        self._seeks: dict[TP, int] = {}
        """Partition -> how often it was sought on its own."""

    def _seek_mark(self, tp: TP) -> tuple[int, int]:
        return self._all_seeks, self._seeks.get(tp, 0)

    async def seek(self, partition: TP, offset: int) -> None:
        self._seeks[partition] = self._seeks.get(partition, 0) + 1
        await super().seek(partition, offset)

    async def perform_seek(self) -> None:
        self._all_seeks += 1
        await super().perform_seek()

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
        fetched_at = {tp: self._seek_mark(tp) for tp in records}
        held_back: dict[TP, int] = {}
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                # A rebalance or stop: Faust seeks every partition to its committed offset
                # before the flow resumes, which re-reads whatever was not handed on.
                return
            if tp in held_back:
                continue  # keep each partition in order: nothing after a skipped record
            if self._seek_mark(tp) != fetched_at[tp]:
                continue  # sought since this batch was fetched: the rest of it is stale
            if (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            else:
                held_back[tp] = record.offset
        # Paused while its records waited: nothing else will ever re-read them.
        assigned = self.assignment()
        for tp, offset in held_back.items():
            if tp in assigned and self._seek_mark(tp) == fetched_at[tp]:
                await self.seek(tp, offset)
