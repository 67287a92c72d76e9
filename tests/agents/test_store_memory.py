"""Every RocksDB store of a worker shares one bounded memory (app/engine/stores.py).

Real RocksDB instances in a temporary folder, opened as Faust opens them: through the
store's ``rocksdb_options``.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

from faust.stores.rocksdb import Store as RocksDBStore

from app.engine.instance import app
from app.engine.stores import (
    ROCKSDB_OPTIONS,
    SharedMemoryOptions,
    new_shared_memory,
    share_store_memory,
    shared_rocksdb_memory,
)
from tables.seen_ids import seen_ids

MiB = 1024**2


def open_store(path: Path, memory: object) -> object:
    options = SharedMemoryOptions(**ROCKSDB_OPTIONS, use_rocksdict=True)
    options.memory = memory  # type: ignore[assignment]
    return options.open(path)


def fill(db: object, n: int, tag: bytes) -> None:
    rng = random.Random(tag)
    for i in range(n):
        # Random values: incompressible, so the data on disk outgrows the cache.
        db.put(b"%s-%08d" % (tag, i), rng.randbytes(200))  # type: ignore[attr-defined]


def test_stores_charge_one_cache_for_blocks_and_memtables(tmp_path: Path) -> None:
    memory = new_shared_memory(16 * MiB)
    dbs = [open_store(tmp_path / f"db{i}", memory) for i in range(4)]
    try:
        assert memory.cache.get_usage() < 4 * MiB
        for i, db in enumerate(dbs):
            fill(db, 10_000, b"k%d" % i)
        # Unflushed writes are memtables, charged to the shared cache (no block was read
        # yet, so the cache holds nothing else). The charge follows the memtables in
        # steps and a flush may be under way, so only its presence is checked.
        assert memory.write_buffers.get_usage() > 0
        assert memory.cache.get_usage() > 0
        for db in dbs:
            db.flush()  # type: ignore[attr-defined]
            db.close()  # type: ignore[attr-defined]
        # Reopened on a memory of their own: the memtables' charge to the first one is
        # released in steps after the flush, so reads could not be told apart from it.
        memory = new_shared_memory(16 * MiB)
        dbs = [open_store(tmp_path / f"db{i}", memory) for i in range(4)]
        usage_before_reads = memory.cache.get_usage()
        for i, db in enumerate(dbs):
            assert db.get(b"k%d-%08d" % (i, 1234)) is not None  # type: ignore[attr-defined]
        # Reads of any store fill the one cache (data, index and filter blocks).
        assert memory.cache.get_usage() > usage_before_reads
    finally:
        for db in dbs:
            db.close()  # type: ignore[attr-defined]


def test_data_larger_than_the_budget_keeps_the_cache_within_it(tmp_path: Path) -> None:
    memory = new_shared_memory(16 * MiB)
    dbs = [open_store(tmp_path / f"db{i}", memory) for i in range(2)]
    try:
        for i, db in enumerate(dbs):
            fill(db, 100_000, b"k%d" % i)  # 2 x 20 MB of values: more than 16 MiB
            db.flush()  # type: ignore[attr-defined]
        for i, db in enumerate(dbs):
            for j in range(0, 100_000, 97):
                assert db.get(b"k%d-%08d" % (i, j)) is not None  # type: ignore[attr-defined]
        on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*.sst"))
        assert on_disk > 32 * MiB
        # LRU, not strict: a little over capacity while entries are in use.
        assert memory.cache.get_usage() <= 17 * MiB
    finally:
        for db in dbs:
            db.close()  # type: ignore[attr-defined]


def test_tables_open_their_rocksdb_stores_on_the_worker_s_shared_memory(
    tmp_path: Path,
) -> None:
    store = RocksDBStore(
        "rocksdb://", app, seen_ids, options=dict(ROCKSDB_OPTIONS), driver="rocksdict"
    )
    table = SimpleNamespace(data=store)
    share_store_memory(table, 64 * MiB)
    assert isinstance(store.rocksdb_options, SharedMemoryOptions)
    assert store.rocksdb_options.write_buffer_size == ROCKSDB_OPTIONS["write_buffer_size"]
    shared = shared_rocksdb_memory()
    before = shared.cache.get_usage()
    db = store.rocksdb_options.open(tmp_path / "seen-ids-0")
    try:
        fill(db, 5_000, b"x")
        assert shared.cache.get_usage() > before  # its memtable is charged to the cache
    finally:
        db.close()


def test_the_memory_store_is_left_as_it_is() -> None:
    store = seen_ids.data  # the agent tests run on memory://
    share_store_memory(seen_ids, 64 * MiB)
    assert not isinstance(store, RocksDBStore)
    assert not hasattr(store, "rocksdb_options")
