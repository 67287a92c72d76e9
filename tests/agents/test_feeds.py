"""The dead-letter feed's decoding: whatever is on the topic, never an exception."""

from __future__ import annotations

import pytest

from agents import feeds


@pytest.mark.parametrize("value", [None, b"", b"{", b"\xff", b"[1]"])
def test_what_is_not_json_or_not_a_letter_decodes_to_something_ignorable(
    value: bytes | None,
) -> None:
    letter = feeds._letter(value)
    assert letter is None or letter == [1]


def test_a_kafka_timestamp_beyond_year_9999_is_no_crash() -> None:
    assert feeds._when(1_795_694_400.0) == "2026-11-26T12:00:00Z"
    assert feeds._when(2**62 / 1000) == ""
