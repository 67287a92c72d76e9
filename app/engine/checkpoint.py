"""Changelog positions recorded in the local stores, and whether one can be trusted.

Every store partition of a table records, in the same RocksDB write batch as the data it
reflects, the position of its changelog partition that the data reflects: the next
offset to read (a Kafka Streams checkpoint, kept inside the store so that it can never
disagree with the data). A store at position P holds the changelog's state at P or a
later one; replaying the changelog from P to its end (last write per key wins) gives
exactly the changelog's state, so a restart or a takeover reads only that tail.

A recorded position is only *trusted* when the changelog it was recorded against is
still the one on the broker and can still be replayed from it (:func:`resume_from`);
otherwise the partition is rebuilt from offset 0 as before. What it cannot tell: a
changelog topic deleted and created again under the same name on the same cluster that
has grown past the recorded position since (Kafka's topic ids would; aiokafka does not
expose them). Deleting a changelog topic under a running deployment loses its tables
anyway; after doing that on purpose, delete DATA_DIR too. This module is pure: no
Kafka, no Faust (app/engine/restore.py and app/engine/standby.py apply it).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

POSITION_KEY = b"\x00changelog-position:"
"""Prefix of the local key (``app.engine.stores.LOCAL_PREFIX``: never changelogged, never
listed) under which a store partition records its position; the partition number
follows, because the in-memory store keeps every partition in one dict."""

RETENTION_MARGIN = 0.9
"""Trust a position for at most this share of the changelog's ``delete.retention.ms``."""


def position_key(partition: int) -> bytes:
    return POSITION_KEY + str(partition).encode()


@dataclass(frozen=True, slots=True)
class Position:
    """Where a store partition stands in its changelog partition."""

    offset: int
    """The next changelog offset to read: everything before it is in the store."""
    as_of: float
    """Wall time (epoch seconds) no later than the oldest changelog record at or after
    ``offset``: a tombstone the store has not seen yet was written after it."""
    cluster: str
    """The Kafka cluster id the changelog lives on (another broker, another log)."""
    topic: str
    """The changelog topic (a DATA_DIR of another APP_ID holds another app's tables)."""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "offset": self.offset,
                "as_of": self.as_of,
                "cluster": self.cluster,
                "topic": self.topic,
            }
        )

    @staticmethod
    def decode(raw: bytes | None) -> Position | None:
        """The position in ``raw``, or None for nothing or anything unreadable (a store
        of another version is rebuilt, never trusted)."""
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            offset, as_of, cluster, topic = (
                doc["offset"],
                doc["as_of"],
                doc["cluster"],
                doc["topic"],
            )
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None
        if (
            not isinstance(offset, int)
            or isinstance(offset, bool)
            or offset < 0
            or not isinstance(as_of, int | float)
            or not isinstance(cluster, str)
            or not isinstance(topic, str)
        ):
            return None
        return Position(offset, float(as_of), cluster, topic)


def resume_from(
    recorded: Position | None,
    *,
    beginning: int,
    end: int,
    cluster: str,
    topic: str,
    delete_retention_s: float | None,
    now: float,
) -> tuple[int | None, str]:
    """Where to start replaying a changelog partition into a store that recorded
    ``recorded``: (offset, why), or (None, why) to rebuild the partition from scratch.

    ``topic``, ``beginning`` and ``end`` are the changelog, its partition's log start
    offset and its (stable) end; ``cluster`` is the id of the cluster it is on;
    ``delete_retention_s`` is the topic's ``delete.retention.ms`` in
    seconds (None: unknown, nothing is trusted).
    """
    if recorded is None:
        return None, "no recorded position"
    if recorded.cluster != cluster:
        return None, f"recorded on another cluster ({recorded.cluster or '?'})"
    if recorded.topic != topic:
        return None, f"recorded for another changelog ({recorded.topic})"
    if recorded.offset > end:
        return None, f"recorded offset {recorded.offset} is past the changelog's end {end}"
    if recorded.offset < beginning:
        return None, (
            f"recorded offset {recorded.offset} is before the changelog's start {beginning}"
        )
    if delete_retention_s is None:
        return None, "the changelog's delete.retention.ms is unknown"
    age = now - recorded.as_of
    if age > delete_retention_s * RETENTION_MARGIN:
        # Compaction may have removed tombstones the store never saw: a deleted key
        # would come back from the dead.
        return None, f"older ({age:.0f} s) than the changelog's delete.retention.ms"
    return recorded.offset, f"resumed at offset {recorded.offset}"
