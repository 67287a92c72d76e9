"""Dead letters: what one looks like, and counting them, each one once.

:func:`dead_letter` builds the ``dead-letters`` value of a rejected input message. Its
size has a hard upper bound (:data:`MAX_DEAD_LETTER_BYTES`) whatever the message was:
the broker accepts values of about 1 MB, and a value of 0x01 bytes would grow sixfold
as JSON text (each byte becomes ``\\u0001``), 0x80 bytes threefold (each becomes U+FFFD).

Ingest may dead-letter a message again after re-reading its input (a restart replays
whatever was not committed). Per input partition the offsets of dead letters only grow,
so a watermark per ``topic/partition`` tells a new rejection from a repeated one. The
summary keeps the latest few letters as short previews, so its size is bounded too.
"""

from __future__ import annotations

from typing import Any

import orjson

VALUE_LIMIT = 16 * 1024
"""Most bytes of the raw value a dead letter quotes (the contract's "16 KiB")."""

KEY_LIMIT = 1024
"""Most bytes of the raw key a dead letter quotes."""

ERROR_LIMIT = 1000
"""Most characters of the error a dead letter carries."""

TOPIC_LIMIT = 255
"""Most characters of the source topic quoted (Kafka allows 249)."""

MAX_DEAD_LETTER_BYTES = 128 * 1024
"""Hard upper bound of an encoded dead letter. Every character of the quoted value and
key comes from at least one raw byte and takes at most 6 bytes of JSON (``\\u0001``):
16 KiB x 6 + 1 KiB x 6 + 1000 x 6 + the rest is below 112 KiB."""

RECENT = 20
"""How many of the latest dead letters a summary keeps (for the dashboard)."""

PREVIEW_CHARS = 256
"""Characters of a letter's value (and error) a summary keeps; its key: 64."""

MAX_SUMMARY_BYTES = 96 * 1024
"""Upper bound of an encoded summary's ``recent`` list: 20 previews of at most
(256 + 64 + 256) characters x 6 bytes plus their fields, well below 96 KiB."""


def cut_utf8(raw: bytes, limit: int) -> str:
    """The first ``limit`` bytes (at most) of ``raw`` as text, invalid bytes as U+FFFD.

    A UTF-8 character that the ``limit``-th byte would split is left out whole, so the
    cut is at a character boundary: the text never ends in a U+FFFD made by the cut.
    """
    if len(raw) <= limit:
        return raw.decode("utf-8", errors="replace")
    end = limit
    for back in range(1, min(4, end + 1)):
        byte = raw[end - back]
        if byte < 0x80:  # ASCII: the cut is after a whole character
            break
        if byte >= 0xC0:  # the lead byte of the last character before the cut
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < length:
                end -= back
            break
    return raw[:end].decode("utf-8", errors="replace")


def dead_letter(
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
) -> bytes:
    """The ``dead-letters`` value for a rejected message: where it was, what, and why.

    ``value`` is the raw value's first 16 KiB (:data:`VALUE_LIMIT` bytes, cut at a
    character boundary) as UTF-8 text, invalid bytes replaced by U+FFFD, and null for
    a null value; ``value_bytes`` the raw value's size. The key likewise, cut at
    :data:`KEY_LIMIT` bytes, with ``key_bytes``. At most :data:`MAX_DEAD_LETTER_BYTES`.
    """
    return orjson.dumps(
        {
            "source_topic": source_topic[:TOPIC_LIMIT],
            "partition": partition,
            "offset": offset,
            "key": None if key is None else cut_utf8(key, KEY_LIMIT),
            "key_bytes": 0 if key is None else len(key),
            "value": None if value is None else cut_utf8(value, VALUE_LIMIT),
            "value_bytes": 0 if value is None else len(value),
            "error": error[:ERROR_LIMIT],
        }
    )


def empty_summary() -> dict[str, Any]:
    return {"count": 0, "recent": [], "watermarks": {}}


def preview(letter: dict[str, Any], at: str) -> dict[str, Any]:
    """A short copy of ``letter`` for a summary's ``recent`` list (bounded size)."""
    return {
        "source_topic": _text(letter.get("source_topic"), TOPIC_LIMIT),
        "partition": letter["partition"],
        "offset": letter["offset"],
        "key": _text(letter.get("key"), 64),
        "value": _text(letter.get("value"), PREVIEW_CHARS),
        "value_bytes": _int(letter.get("value_bytes")),
        "error": _text(letter.get("error"), PREVIEW_CHARS),
        "dead_lettered_at": at[:40],
    }


def count_dead_letter(summary: dict[str, Any], letter: Any, at: str) -> bool:
    """Count ``letter`` (a decoded ``dead-letters`` value) into ``summary`` in place, if
    it is new.

    ``at`` is when it was dead-lettered (ISO-8601 UTC, from the record's Kafka timestamp);
    it orders ``recent`` lists across partitions. Returns whether the letter was new.
    Anything that is not a dead letter (the topic is writable by anyone) is ignored.
    """
    if (
        type(letter) is not dict
        or type(letter.get("source_topic")) is not str
        or type(letter.get("partition")) is not int
        or type(letter.get("offset")) is not int
    ):
        return False
    source = f"{letter['source_topic'][:TOPIC_LIMIT]}/{letter['partition']}"
    watermarks: dict[str, int] = summary.setdefault("watermarks", {})
    if letter["offset"] <= watermarks.get(source, -1):
        return False
    watermarks[source] = letter["offset"]
    summary["count"] += 1
    summary["recent"] = [preview(letter, at), *summary["recent"]][:RECENT]
    return True


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if type(value) is str else None


def _int(value: object) -> int | None:
    return value if type(value) is int else None
