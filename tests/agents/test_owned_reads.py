"""Unkeyed table reads cover the partitions this worker owns and restored, no more, no
less, whatever Faust's assignor thinks of the changelog partitions (a changelog topic
created after the group was assigned is not in its assignment at all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agents import tracker
from app.engine.stores import items, put
from tables import sku_state


@pytest.fixture
def ready() -> Iterator[set[int]]:
    ready: set[int] = tracker.restorer._ready
    saved = set(ready)
    ready.clear()
    yield ready
    ready.clear()
    ready.update(saved)


def test_unkeyed_reads_follow_the_restorer(ready: set[int]) -> None:
    put(sku_state, b"a", b"1", 0)
    put(sku_state, b"b", b"2", 2)
    put(sku_state, b"c", b"3", 3)
    ready.update({0, 2})
    assert sorted(items(sku_state)) == [(b"a", b"1"), (b"b", b"2")]
    # Revoked: its rows stay on disk until the next restore, but are no longer served.
    tracker.restorer.forget([2])
    assert list(items(sku_state)) == [(b"a", b"1")]
    ready.add(3)
    assert sorted(items(sku_state)) == [(b"a", b"1"), (b"c", b"3")]
    # A keyed partition read is unchanged.
    assert list(items(sku_state, 2)) == [(b"b", b"2")]
