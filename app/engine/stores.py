"""Reading and writing the tables' local stores: raw bytes, explicit partitions.

Faust's stores pick the partition of a read or write from the *current event*, which is
wrong for an agent that processes a batch of several partitions at once. The functions
here take the partition explicitly, for both the RocksDB and the in-memory store, and
are the only code that reaches into Faust's store classes. Values are orjson
documents, parsed by the caller once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore
from rocksdict import WriteBatch


def get(table: Any, key: bytes, partition: int) -> bytes | None:
    store = table.data
    if isinstance(store, RocksDBStore):
        value: bytes | None = store._db_for_partition(partition).get(key)
        return value
    found: bytes | None = store.data.get(key)
    return found


def lookup(table: Any, key: bytes) -> bytes | None:
    """Read ``key`` from whichever local partition holds it (for HTTP reads), except
    the partitions this worker holds only as standbys (see :func:`not_served`)."""
    store = table.data
    hidden = set(_hidden[id(table)]()) if id(table) in _hidden else set()
    if isinstance(store, RocksDBStore):
        if not hidden:
            found: bytes | None = store._get(key)
            return found
        for partition, db in list(store._dbs.items()):
            if partition not in hidden and (in_db := db.get(key)) is not None:
                return bytes(in_db)
        return None
    if hidden and store._key_partition.get(key) in hidden:
        return None
    value: bytes | None = store.data.get(key)
    return value


_hidden: dict[int, Callable[[], Iterable[int]]] = {}
"""id(table) -> the partitions of it that HTTP reads must not answer from."""


def not_served(table: Any, partitions: Callable[[], Iterable[int]]) -> None:
    """:func:`lookup` of ``table`` never answers from ``partitions()`` (standbys: a
    copy kept warm for a takeover, not this worker's to serve)."""
    _hidden[id(table)] = partitions


def put(table: Any, key: bytes, value: bytes | None, partition: int) -> None:
    """Write (or, with None, delete) ``key`` in the local store of ``partition``."""
    store = table.data
    if isinstance(store, RocksDBStore):
        db = store._db_for_partition(partition)
        if value is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            db.put(key, value)
            store._key_index[key] = partition
    elif value is None:
        store.data.pop(key, None)
        store._key_partition.pop(key, None)
    else:
        store.data[key] = value
        store._key_partition[key] = partition


def put_many(table: Any, writes: Sequence[tuple[bytes, bytes | None]], partition: int) -> None:
    """:func:`put` of every (key, value) of ``writes``, in one RocksDB write batch.

    A batch commits thousands of table writes; one write batch costs less than half
    of as many single puts.
    """
    store = table.data
    if not (isinstance(store, RocksDBStore) and store.use_rocksdict):
        for key, value in writes:
            put(table, key, value, partition)
        return
    batch = WriteBatch(raw_mode=True)
    key_index = store._key_index
    for key, value in writes:
        if value is None:
            batch.delete(key)
            key_index.pop(key, None)
        else:
            batch.put(key, value)
            key_index[key] = partition
    store._db_for_partition(partition).write(batch)


LOCAL_PREFIX = b"\x00"
"""Keys starting with this byte are local to the store: never in the changelog, never
listed by :func:`items` (e.g. the duplicate memory's expiry index)."""

_owners: dict[int, Callable[[], Iterable[int]]] = {}
"""id(table) -> the partitions of it this worker owns and has restored (app/engine/restore.py)."""


def owned_by(table: Any, partitions: Callable[[], Iterable[int]]) -> None:
    """Unkeyed reads of ``table`` cover exactly ``partitions()`` (see :func:`items`)."""
    _owners[id(table)] = partitions


def items(table: Any, partition: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of one local partition, or of all this worker owns (without
    the local keys, see LOCAL_PREFIX).

    "Owns" is what the table's restorer says (:func:`owned_by`): the partitions of its
    source topic assigned here and restored. Faust's own notion, the *changelog*
    partitions its assignor handed out, leaves out every partition of a changelog topic
    that did not exist yet when the group was assigned (a fresh deployment), although
    the worker writes and serves those partitions.
    """
    owner = _owners.get(id(table))
    if partition is None and owner is not None:
        for p in sorted(set(owner())):
            yield from items(table, p)
        return
    store = table.data
    if isinstance(store, RocksDBStore):
        found = (
            store._iteritems()
            if partition is None
            else store._visible_items(store._db_for_partition(partition))
        )
        for key, value in found:
            if not key.startswith(LOCAL_PREFIX):
                yield key, value
        return
    key_partition = store._key_partition
    for key, value in list(store.data.items()):
        if value is None or key.startswith(LOCAL_PREFIX):
            continue
        if partition is None or key_partition.get(key) == partition:
            yield key, value


def local_range(
    table: Any, partition: int, start: bytes, stop: bytes
) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of one local partition with ``start <= key < stop``, in
    key order, read lazily from RocksDB (sorted in memory for the memory store)."""
    store = table.data
    if isinstance(store, RocksDBStore):
        db = store._db_for_partition(partition)
        for key, value in db.items(from_key=start):
            if key >= stop:
                return
            yield key, value
        return
    owner = store._key_partition
    for key in sorted(k for k in store.data if start <= k < stop and owner.get(k) == partition):
        yield key, store.data[key]


def put_local(table: Any, writes: Sequence[tuple[bytes, bytes | None]], partition: int) -> None:
    """Write local keys (see LOCAL_PREFIX): to the store only, never to the changelog."""
    assert all(key.startswith(LOCAL_PREFIX) for key, _ in writes)
    put_many(table, writes, partition)
