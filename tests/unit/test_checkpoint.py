"""Whether a store's recorded changelog position is trusted (app/engine/checkpoint.py)."""

from __future__ import annotations

import pytest

from app.engine.checkpoint import RETENTION_MARGIN, Position, position_key, resume_from

DAY = 86_400.0
NOW = 1_800_000_000.0
TOPIC = "app-sku-state-changelog"


def decide(recorded: Position | None, **given: object) -> tuple[int | None, str]:
    facts: dict[str, object] = {
        "beginning": 0,
        "end": 500,
        "cluster": "c1",
        "topic": TOPIC,
        "delete_retention_s": DAY,
        "now": NOW,
    }
    facts.update(given)
    return resume_from(recorded, **facts)  # type: ignore[arg-type]


def at(offset: int, *, age_s: float = 60.0, cluster: str = "c1", topic: str = TOPIC) -> Position:
    return Position(offset, NOW - age_s, cluster, topic)


def test_a_position_within_the_log_is_resumed_from() -> None:
    assert decide(at(320)) == (320, "resumed at offset 320")


@pytest.mark.parametrize("offset", [0, 500])
def test_the_ends_of_the_log_are_valid_positions(offset: int) -> None:
    # 0: nothing was ever applied; the end: everything was (a clean stop).
    assert decide(at(offset))[0] == offset


@pytest.mark.parametrize(
    ("recorded", "given", "why"),
    [
        (None, {}, "no recorded position"),
        (at(501), {}, "past the changelog's end 500"),
        (at(10), {"beginning": 11}, "before the changelog's start 11"),
        (at(10, cluster="c0"), {}, "another cluster (c0)"),
        (at(10, topic="other-app-sku-state-changelog"), {}, "another changelog"),
        (at(10), {"delete_retention_s": None}, "delete.retention.ms is unknown"),
        (at(10, age_s=DAY), {}, "older (86400 s) than the changelog's delete.retention.ms"),
    ],
)
def test_an_untrustworthy_position_means_a_rebuild(
    recorded: Position | None, given: dict[str, object], why: str
) -> None:
    offset, reason = decide(recorded, **given)
    assert offset is None
    assert why in reason


def test_a_position_is_trusted_for_a_margin_below_the_tombstone_retention() -> None:
    inside = DAY * RETENTION_MARGIN - 1
    assert decide(at(10, age_s=inside))[0] == 10
    assert decide(at(10, age_s=inside + 2))[0] is None


def test_a_position_survives_its_encoding() -> None:
    position = Position(12_345, NOW - 0.5, "cluster-id", TOPIC)
    assert Position.decode(position.encode()) == position


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b"12",
        b'{"offset": 3}',
        b'{"offset": -1, "as_of": 1, "cluster": "c", "topic": "t"}',
        b'{"offset": true, "as_of": 1, "cluster": "c", "topic": "t"}',
        b'{"offset": 1.5, "as_of": 1, "cluster": "c", "topic": "t"}',
        b'{"offset": 1, "as_of": "x", "cluster": "c", "topic": "t"}',
        b'{"offset": 1, "as_of": 1, "cluster": 3, "topic": "t"}',
        b'{"offset": 1, "as_of": 1, "cluster": "c", "topic": null}',
    ],
)
def test_anything_unreadable_is_no_position(raw: bytes | None) -> None:
    assert Position.decode(raw) is None


def test_position_keys_are_local_and_per_partition() -> None:
    # tables.base.LOCAL_PREFIX: never changelogged, never listed.
    assert position_key(3).startswith(b"\x00")
    assert position_key(3) != position_key(13)
