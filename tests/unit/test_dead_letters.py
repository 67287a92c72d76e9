"""Dead letters: bounded in size, and counted once each with the latest few kept."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.rules.dead_letters import (
    ERROR_LIMIT,
    KEY_LIMIT,
    MAX_DEAD_LETTER_BYTES,
    MAX_SUMMARY_BYTES,
    PREVIEW_CHARS,
    RECENT,
    VALUE_LIMIT,
    count_dead_letter,
    cut_utf8,
    dead_letter,
    empty_summary,
)


def letter(offset: int, partition: int = 0, topic: str = "orders") -> dict[str, object]:
    return {
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "key": None,
        "value": "{",
        "error": "bad JSON",
    }


def test_each_rejected_message_counts_once_even_when_dead_lettered_again() -> None:
    summary = empty_summary()
    assert count_dead_letter(summary, letter(5), "2026-11-26T12:00:00Z")
    assert count_dead_letter(summary, letter(5, partition=1), "2026-11-26T12:00:01Z")
    assert count_dead_letter(summary, letter(5, topic="stock"), "2026-11-26T12:00:02Z")
    # Ingest re-read its input after a restart: the same and older offsets come again.
    assert not count_dead_letter(summary, letter(5), "2026-11-26T12:05:00Z")
    assert not count_dead_letter(summary, letter(3), "2026-11-26T12:05:00Z")
    assert summary["count"] == 3
    assert summary["recent"][0]["dead_lettered_at"] == "2026-11-26T12:00:02Z"


def test_only_the_latest_are_kept() -> None:
    summary = empty_summary()
    for offset in range(RECENT + 15):
        count_dead_letter(summary, letter(offset), f"t{offset:03d}")
    assert summary["count"] == RECENT + 15
    assert [d["offset"] for d in summary["recent"]] == list(range(RECENT + 14, 14, -1))


# --- the dead letter itself: bounded whatever the message ---------------------------

PROPERTY = settings(deadline=None, database=None)


def built(key: bytes | None, value: bytes | None, error: str = "bad") -> tuple[bytes, Any]:
    encoded = dead_letter("orders", 3, 17, key, value, error)
    return encoded, orjson.loads(encoded)


def test_a_small_message_is_quoted_whole() -> None:
    encoded, letter = built(b"k\xff", b'{"sku": "\xff"}')
    assert letter == {
        "source_topic": "orders",
        "partition": 3,
        "offset": 17,
        "key": "k\ufffd",
        "key_bytes": 2,
        "value": '{"sku": "\ufffd"}',
        "value_bytes": 12,
        "error": "bad",
    }
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES


def test_a_null_value_and_key() -> None:
    _, letter = built(None, None)
    assert (letter["key"], letter["key_bytes"], letter["value"], letter["value_bytes"]) == (
        None,
        0,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("byte", "size"),
    [(b"\x80", 900_000), (b"\x01", 200_000), (b"\x01", 1_000_000), (b'"', 900_000)],
)
def test_huge_values_are_cut_at_16_kib_of_raw_input(byte: bytes, size: int) -> None:
    encoded, letter = built(byte * 5000, byte * size, "e" * 50_000)
    assert letter["value"] == (byte * VALUE_LIMIT).decode("utf-8", errors="replace")
    assert len(letter["value"]) == VALUE_LIMIT == 16 * 1024
    assert letter["value_bytes"] == size
    assert len(letter["key"]) == KEY_LIMIT and letter["key_bytes"] == 5000
    assert len(letter["error"]) == ERROR_LIMIT
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES


def test_truncated_json_of_450_kb_is_cut() -> None:
    raw = orjson.dumps({"order_id": "o", "junk": ["x" * 100] * 5000})[:450_000]
    _, letter = built(None, raw)
    assert letter["value"] == raw[:VALUE_LIMIT].decode()
    assert letter["value_bytes"] == 450_000


@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_the_cut_never_splits_a_character(char: str) -> None:
    encoded_char = char.encode()
    for pad in range(VALUE_LIMIT - 4, VALUE_LIMIT + 1):
        raw = b"a" * pad + encoded_char * 3
        value = built(None, raw)[1]["value"]
        assert "\ufffd" not in value
        assert raw.decode().startswith(value)
        assert VALUE_LIMIT - len(encoded_char) < len(value.encode()) <= VALUE_LIMIT


@PROPERTY
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=70))
def test_cut_utf8_is_a_prefix_of_at_most_limit_bytes(raw: bytes, limit: int) -> None:
    text = cut_utf8(raw, limit)
    # Some prefix of raw, of at most ``limit`` bytes and at most 3 fewer, decoded.
    candidates = [raw[:n].decode("utf-8", errors="replace") for n in range(limit + 1)]
    assert text in candidates[max(0, min(limit, len(raw)) - 3) :]


@PROPERTY
@given(st.text(max_size=40), st.integers(min_value=0, max_value=50))
def test_cut_utf8_of_valid_text_is_a_prefix_without_replacement(text: str, limit: int) -> None:
    raw = text.encode("utf-8", errors="surrogatepass")
    if "\ufffd" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    cut = cut_utf8(raw, limit)
    assert text.startswith(cut) and "\ufffd" not in cut
    assert len(cut.encode()) <= limit
    assert len(cut.encode()) > min(limit, len(raw)) - 4


# --- the summary: bounded too -------------------------------------------------------


def test_the_summary_keeps_short_previews_only() -> None:
    summary = empty_summary()
    for offset in range(10):
        raw = b'{"order_id": "' + b"\x01" * 450_000  # truncated JSON of escaped bytes
        letter = orjson.loads(dead_letter("orders", 0, offset, b"\x01" * 5000, raw, "e" * 5000))
        assert count_dead_letter(summary, letter, "2026-11-26T12:00:00Z")
    assert summary["count"] == 10
    newest = summary["recent"][0]
    assert newest["offset"] == 9 and newest["value_bytes"] == 450_014
    assert len(newest["value"]) == PREVIEW_CHARS
    assert len(orjson.dumps(summary["recent"])) <= MAX_SUMMARY_BYTES
    for offset in range(10, 10 + RECENT * 3):
        letter = {
            "source_topic": "t" * 300,
            "partition": 1,
            "offset": offset,
            "key": "\x01" * 2000,
            "value": "\x01" * 20_000,
            "value_bytes": 20_000,
            "error": "\x01" * 2000,
        }
        count_dead_letter(summary, letter, "x" * 100)
    assert len(summary["recent"]) == RECENT
    assert len(orjson.dumps(summary["recent"])) <= MAX_SUMMARY_BYTES


@pytest.mark.parametrize(
    "junk",
    [None, [], "x", {"source_topic": 1, "partition": 0, "offset": 0}, {"offset": 5}],
)
def test_what_is_not_a_dead_letter_is_ignored(junk: Any) -> None:
    summary = empty_summary()
    assert not count_dead_letter(summary, junk, "2026-11-26T12:00:00Z")
    assert summary == empty_summary()
