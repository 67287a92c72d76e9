"""Faust's aiokafka consumer, minus a way to lose messages.

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
to its committed offset). Everything else is Faust's code unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message


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
        held_back: dict[TP, int] = {}
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                # A rebalance or stop: Faust seeks every partition to its committed offset
                # before the flow resumes, which re-reads whatever was not handed on.
                return
            if tp in held_back:
                continue  # keep each partition in order: nothing after a skipped record
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
            if tp in assigned:
                await self.seek(tp, offset)
