"""Counting rejected input messages: each one once, however often it is dead-lettered.

Ingest may dead-letter a message again after re-reading its input (a restart replays
whatever was not committed). Per input partition the offsets of dead letters only grow,
so a watermark per ``topic/partition`` tells a new rejection from a repeated one.
"""

from __future__ import annotations

from typing import Any

RECENT = 20
"""How many of the latest dead letters a summary keeps (for the dashboard)."""


def empty_summary() -> dict[str, Any]:
    return {"count": 0, "recent": [], "watermarks": {}}


def count_dead_letter(summary: dict[str, Any], letter: dict[str, Any], at: str) -> bool:
    """Count ``letter`` (a ``dead-letters`` value) into ``summary`` in place, if it is new.

    ``at`` is when it was dead-lettered (ISO-8601 UTC, from the record's Kafka timestamp);
    it orders ``recent`` lists across partitions. Returns whether the letter was new.
    """
    source = f"{letter['source_topic']}/{letter['partition']}"
    watermarks: dict[str, int] = summary.setdefault("watermarks", {})
    if letter["offset"] <= watermarks.get(source, -1):
        return False
    watermarks[source] = letter["offset"]
    summary["count"] += 1
    summary["recent"] = [{**letter, "dead_lettered_at": at}, *summary["recent"]][:RECENT]
    return True
