"""Reading and writing the tables' local stores: raw bytes, explicit partitions.

Faust's stores pick the partition of a read or write from the *current event*, which is
wrong for an agent that processes a batch of several partitions at once. The functions
here take the partition explicitly, for both the RocksDB and the in-memory store, and
are the only code that reaches into Faust's store classes. Values are orjson
documents, parsed by the caller once. It also owns the RocksDB options every store
opens with: one memory budget for the whole worker (:func:`shared_rocksdb_memory`), and
the local indexes a table keeps beside its records (:func:`index_with`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from rocksdict import WriteBatch

ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024**2,
    "max_write_buffer_number": 2,
}
"""Per RocksDB instance (one per table per partition: 7 x TOPIC_PARTITIONS of them): at
most two 4 MiB memtables each, and all of them together within the worker's shared
budget (see :func:`shared_rocksdb_memory`)."""


@dataclass(frozen=True, slots=True)
class SharedMemory:
    """The one block cache and write buffer manager of every RocksDB store of a worker."""

    cache: rocksdict.Cache
    write_buffers: rocksdict.WriteBufferManager
    budget: int
    """STORE_MEMORY_MB in bytes: what the cache holds at most (memtables included)."""


_shared_memory: SharedMemory | None = None


def shared_rocksdb_memory(budget: int | None = None) -> SharedMemory:
    """The worker's RocksDB memory, shared by every store (built on first use, of
    ``budget`` bytes; later calls return the same one).

    One LRU cache of STORE_MEMORY_MB holds the data blocks *and* the index and filter
    blocks of every store, and the memtables are charged to it too (RocksDB's write
    buffer manager with a cache), flushing when they pass half of it. Per instance,
    Faust's options gave each store its own cache (2 GiB by default, then 4 MiB here)
    and kept every SST file's index and bloom filter in memory outside any cache, so
    memory grew with the number of stores (tables x partitions) and with the data on
    disk (about 1.5 bytes of filter per key). Now it is bounded by the budget whatever
    the partitions and the orders, and state larger than RAM only costs reads from disk.
    """
    global _shared_memory
    if _shared_memory is None:
        _shared_memory = new_shared_memory(budget if budget is not None else 64 * 1024**2)
    return _shared_memory


def new_shared_memory(budget: int) -> SharedMemory:
    """A cache of ``budget`` bytes, with memtables charged to it up to half of it."""
    cache = rocksdict.Cache(budget)
    return SharedMemory(
        cache=cache,
        write_buffers=rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            budget // 2, False, cache
        ),
        budget=budget,
    )


class SharedMemoryOptions(RocksDBOptions):
    """Faust's RocksDB options (rocksdict driver) on the worker's shared memory."""

    memory: SharedMemory | None = None
    """The memory to use; None: the worker's (:func:`shared_rocksdb_memory`)."""

    def open(self, path: Path, *, read_only: bool = False) -> rocksdict.Rdict:
        """Open (or create) the store at ``path`` with these options.

        Faust opens without naming column families; rocksdict then reads the options of
        an existing store's column families from its OPTIONS file, with a block cache of
        their own: every store reopened after a restart would have had its own cache,
        outside STORE_MEMORY_MB. Naming the default column family gives it ours.
        """
        if not self.use_rocksdict:  # pragma: no cover - every table opens with rocksdict
            db_of_faust: rocksdict.Rdict = super().open(path, read_only=read_only)
            return db_of_faust
        options = self.as_options()
        db = rocksdict.Rdict(
            str(path),
            options=options,
            column_families={"default": options},
            access_type=rocksdict.AccessType.read_write(),
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db

    def as_options(self) -> rocksdict.Options:
        shared = self.memory or shared_rocksdb_memory()
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(-1 if self.max_open_files is None else self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        # A restart opens 7 x TOPIC_PARTITIONS stores one after another; statistics read
        # from every table file at open only tune compaction.
        options.set_skip_stats_update_on_db_open(True)
        options.set_write_buffer_manager(shared.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(shared.cache)
        # Index and filter blocks in the cache (bounded) rather than beside it (growing
        # with the data); level 0's stay pinned, as they are read on every lookup.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


def share_store_memory(table: Any, budget: int) -> None:
    """Open ``table``'s RocksDB stores on the worker's shared memory of ``budget`` bytes
    (the first call sets it); a no-op for memory://.

    Faust builds each store's options itself from ``options=`` and has no hook for a
    shared cache, so the store's options object is replaced before any store opens.
    """
    store = table.data
    if isinstance(store, RocksDBStore) and store.use_rocksdict:
        shared_rocksdb_memory(budget)
        store.rocksdb_options = SharedMemoryOptions(**ROCKSDB_OPTIONS, use_rocksdict=True)


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


Write = tuple[bytes, bytes | None]
Derive = Callable[[bytes, bytes | None], Iterable[Write]]
"""(key, value or None for a delete) of one record -> the local writes it implies."""


@dataclass(frozen=True, slots=True)
class LocalIndex:
    """Local keys a table derives from each of its records (see :func:`index_with`)."""

    prefix: bytes
    """Every local key of the index starts with it."""
    derive: Derive
    marker: bytes
    """Local key saying a store partition's index is complete (names the version)."""


_indexes: dict[int, LocalIndex] = {}
"""id(table) -> its local index."""


def index_with(table: Any, prefix: bytes, version: str, derive: Derive) -> None:
    """Keep local keys derived from ``table``'s records, in the same write batch as
    the records, on every path that writes the store: a committed batch, a restore, a
    standby replica. So an index is never rebuilt after a restore or a takeover.

    ``derive`` sees only the record, not what it replaces: a record that is replaced or
    deleted leaves its index keys behind, which the index's reader must recognise as
    stale (by reading the record they name). Its keys start with ``prefix`` (which
    starts with LOCAL_PREFIX). ``version`` names the index's format: a store partition
    written by code that kept no index, or another format, is not :func:`index_complete`
    until :func:`complete_index` made it so.
    """
    assert prefix.startswith(LOCAL_PREFIX) and not b"index:".startswith(prefix[1:])
    marker = LOCAL_PREFIX + b"index:" + version.encode()
    _indexes[id(table)] = LocalIndex(prefix, derive, marker)


def index_complete(table: Any, partition: int) -> bool:
    """Whether every record of the store partition went through ``table``'s index."""
    index = _indexes.get(id(table))
    return index is None or get(table, index.marker, partition) is not None


def mark_index_complete(table: Any, partition: int) -> None:
    """Record that the store partition's index is complete (an empty store's is)."""
    index = _indexes.get(id(table))
    if index is not None:
        put_many(table, [(index.marker, b"")], partition)


def complete_index(table: Any, partition: int) -> bool:
    """Rebuild ``table``'s index in a store partition that is not :func:`index_complete`
    (written by an older release): one pass over its records, in write batches, nothing
    kept in memory. Whether it had to."""
    index = _indexes.get(id(table))
    if index is None or index_complete(table, partition):
        return False
    end = index.prefix[:-1] + bytes([index.prefix[-1] + 1])
    writes: list[Write] = [(k, None) for k, _ in local_range(table, partition, index.prefix, end)]
    for key, value in items(table, partition):
        writes.extend(index.derive(key, value))
        if len(writes) >= 10_000:
            _put_raw(table, writes, partition)
            writes = []
    _put_raw(table, [*writes, (index.marker, b"")], partition)
    return True


def _with_index(table: Any, writes: Sequence[Write]) -> Sequence[Write]:
    index = _indexes.get(id(table))
    if index is None:
        return writes
    derive = index.derive
    derived = [
        w for key, value in writes if not key.startswith(LOCAL_PREFIX) for w in derive(key, value)
    ]
    # After the records' own writes: an index key written explicitly in the same batch
    # (e.g. the delete of the one a renewed record leaves) never undoes a derived one.
    return [*writes, *derived] if derived else writes


def put_many(table: Any, writes: Sequence[tuple[bytes, bytes | None]], partition: int) -> None:
    """:func:`put` of every (key, value) of ``writes``, in one RocksDB write batch, with
    the local index keys they imply (:func:`index_with`).

    A batch commits thousands of table writes; one write batch costs less than half
    of as many single puts.
    """
    _put_raw(table, _with_index(table, writes), partition)


def _put_raw(table: Any, writes: Sequence[Write], partition: int) -> None:
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
