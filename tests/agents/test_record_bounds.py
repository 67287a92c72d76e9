"""The engine guard: no record larger than MAX_RECORD_BYTES can be staged in a Batch."""

from __future__ import annotations

import pytest

from app.engine.transaction import MAX_RECORD_BYTES, Batch, RecordTooLarge
from tables import sku_state


def test_an_output_up_to_the_limit_is_staged() -> None:
    batch = Batch()
    batch.emit("out", b"k", b"v" * (MAX_RECORD_BYTES - 1))
    batch.emit("out", None, b"v" * MAX_RECORD_BYTES)
    assert len(batch.outputs) == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (None, b"v" * (MAX_RECORD_BYTES + 1)),
        (b"k", b"v" * MAX_RECORD_BYTES),
        (b"k" * MAX_RECORD_BYTES, b"v"),
    ],
)
def test_a_larger_output_is_refused_and_nothing_staged(key: bytes | None, value: bytes) -> None:
    batch = Batch()
    with pytest.raises(RecordTooLarge) as caught:
        batch.emit("out", key, value)
    assert batch.outputs == []
    assert caught.value.size == len(value) + len(key or b"")
    assert "out" in str(caught.value) and str(MAX_RECORD_BYTES) in str(caught.value)


def test_a_larger_table_change_is_refused_and_nothing_staged() -> None:
    batch = Batch(table_partition=0)
    batch.put(sku_state, b"k", b"v" * (MAX_RECORD_BYTES - 1))
    batch.put(sku_state, b"gone", None)
    with pytest.raises(RecordTooLarge):
        batch.put(sku_state, b"k2", b"v" * MAX_RECORD_BYTES)
    with pytest.raises(RecordTooLarge):
        batch.put(sku_state, b"k" * (MAX_RECORD_BYTES + 1), None)
    assert set(batch.table_writes) == {(sku_state, b"k"), (sku_state, b"gone")}
