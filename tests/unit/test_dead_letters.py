"""Counting dead letters: each rejected input message once, the latest few kept."""

from __future__ import annotations

from app.rules.dead_letters import RECENT, count_dead_letter, empty_summary


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
