"""Changelog positions in the stores: written with the data they reflect, never listed,
never served from a standby (app/engine/: checkpoint.py, transaction.py, restore.py)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from app.engine import restore
from app.engine.checkpoint import Position
from app.engine.instance import settings
from app.engine.stores import LOCAL_PREFIX, get, items, lookup, not_served, put
from app.engine.transaction import Batch, _changelog_records, _write_stores
from tables import sku_state

TOPIC = sku_state.changelog_topic.get_topic_name()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setitem(restore._clusters, settings.broker_host_ports, (0.0, "cluster-a"))
    yield "cluster-a"


def committed(partition: int, writes: dict[bytes, bytes | None], upto: int | None) -> Batch:
    batch = Batch(table_partition=partition)
    for key, value in writes.items():
        batch.put(sku_state, key, value)
    if upto is not None:
        batch.written_upto[(TOPIC, partition)] = upto
    _write_stores(batch)
    return batch


def test_a_committed_batch_records_the_position_after_its_changelog_records(
    cluster: str,
) -> None:
    batch = committed(2, {b"A": b"1", b"B": b"2"}, upto=41)
    found = restore.recorded_position(sku_state, 2)
    assert found is not None and (found.offset, found.cluster, found.topic) == (41, cluster, TOPIC)
    # A local key: not a table row, not a changelog record.
    assert dict(items(sku_state, 2)) == {b"A": b"1", b"B": b"2"}
    assert all(not key.startswith(LOCAL_PREFIX) for _, key, _, _ in _changelog_records(batch))
    assert restore.recorded_position(sku_state, 1) is None


def test_a_batch_whose_offsets_are_unknown_keeps_the_older_position(cluster: str) -> None:
    # An earlier attempt committed and only its answer was lost: an older position is
    # safe (the restore replays a little more), a guessed newer one would not be.
    committed(0, {b"A": b"1"}, upto=10)
    committed(0, {b"A": b"2"}, upto=None)
    found = restore.recorded_position(sku_state, 0)
    assert found is not None and found.offset == 10
    assert get(sku_state, b"A", 0) == b"2"


def test_without_a_known_cluster_no_position_is_recorded() -> None:
    committed(3, {b"A": b"1"}, upto=10)
    assert restore.recorded_position(sku_state, 3) is None


def test_a_fetch_is_applied_with_the_position_after_its_last_record() -> None:
    records = [
        SimpleNamespace(topic=TOPIC, offset=o, timestamp=1_000_000 + o, key=k, value=v)
        for o, k, v in [(5, b"A", b"1"), (7, b"B", b"2"), (9, b"A", None), (12, b"C", b"3")]
    ]
    assert restore.apply_fetched(sku_state, 1, records, "cluster-a", end=10) == 3
    assert dict(items(sku_state, 1)) == {b"B": b"2"}
    assert restore.recorded_position(sku_state, 1) == Position(10, 1_000.009, "cluster-a", TOPIC)


def test_a_wipe_takes_the_partition_and_its_position_and_nothing_else(cluster: str) -> None:
    committed(0, {b"A": b"1"}, upto=3)
    committed(1, {b"B": b"1"}, upto=4)
    restore.wipe_partition(sku_state, 0)
    assert list(items(sku_state, 0)) == []
    assert restore.recorded_position(sku_state, 0) is None
    assert dict(items(sku_state, 1)) == {b"B": b"1"}
    assert restore.recorded_position(sku_state, 1) is not None


def test_http_reads_never_answer_from_a_standby_partition() -> None:
    put(sku_state, b"mine", b"1", 0)
    put(sku_state, b"standby", b"2", 3)
    not_served(sku_state, lambda: {3})
    try:
        assert lookup(sku_state, b"mine") == b"1"
        assert lookup(sku_state, b"standby") is None
    finally:
        not_served(sku_state, lambda: set())
    assert lookup(sku_state, b"standby") == b"2"
