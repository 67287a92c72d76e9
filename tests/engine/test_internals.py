"""Every private part of Faust, mode, aiokafka and aiohttp the engine relies on, pinned.

The engine (``app/engine/``) is the only code that reaches into these libraries'
internals (``../shared/tools/archcheck.py`` and import-linter keep it so). This test is
its inventory: one row per internal, naming the engine function or class that uses it.
On a library version where one of them is gone, the failure names it and its user, so
an upgrade starts from a list instead of from a crash in production. Upstream
methods the engine *re-implements* (rather than calls) are pinned by a hash of their
source: when upstream changes them, the copy must be reviewed.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, NamedTuple

import aiohttp.web
import aiohttp.web_server
import faust
import faust.assignor.partition_assignor
import faust.stores.memory
import faust.stores.rocksdb
import faust.tables.manager
import faust.tables.recovery
import faust.transport.consumer
import faust.transport.drivers.aiokafka as faust_aiokafka
import faust.web.drivers.aiohttp
import mode
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState, TopicPartitionState


class Internal(NamedTuple):
    owner: Any
    """The upstream class that has it."""
    name: str
    """The private method or attribute."""
    used_by: str
    """Where the engine uses it (module: function or class)."""


INTERNALS = (
    # app/engine/stores.py: reads and writes with an explicit partition.
    Internal(faust.stores.rocksdb.Store, "_db_for_partition", "stores: get, put, put_many, items"),
    Internal(faust.stores.rocksdb.Store, "_key_index", "stores: put, put_many"),
    Internal(faust.stores.rocksdb.Store, "_get", "stores: lookup"),
    Internal(faust.stores.rocksdb.Store, "_dbs", "stores: lookup (skipping standbys)"),
    Internal(faust.stores.rocksdb.Store, "_iteritems", "stores: items"),
    Internal(faust.stores.rocksdb.Store, "_visible_items", "stores: items"),
    Internal(faust.stores.memory.Store, "_key_partition", "stores: put, items, local_range"),
    # app/engine/stores.py: every store opens on the worker's one RocksDB memory.
    Internal(faust.stores.rocksdb.Store, "rocksdb_options", "stores: share_store_memory"),
    Internal(faust.stores.rocksdb.Store, "use_rocksdict", "stores: share_store_memory"),
    Internal(faust.stores.rocksdb.RocksDBOptions, "as_options", "stores: SharedMemoryOptions"),
    Internal(faust.stores.rocksdb.RocksDBOptions, "open", "stores: SharedMemoryOptions.open"),
    # app/engine/transaction.py: one transaction per batch on Faust's producers.
    Internal(faust_aiokafka.Producer, "_trn_locks", "transaction: _commit_transactional"),
    Internal(faust_aiokafka.Producer, "_transaction_producers", "transaction: _ready_producer"),
    Internal(faust_aiokafka.Producer, "_new_producer", "transaction: _ready_producer"),
    Internal(AIOKafkaProducer, "_txn_manager", "transaction: _ready_producer"),
    Internal(AIOKafkaProducer, "_closed", "transaction: _stop_quietly"),
    Internal(AIOKafkaProducer, "_sender", "transaction: _stop_quietly"),
    Internal(AIOKafkaProducer, "_partitioner", "transaction: _send_batched"),
    Internal(AIOKafkaProducer, "_metadata", "transaction: _send_batched"),
    Internal(AIOKafkaProducer, "_partition", "transaction: _send_batched"),
    Internal(AIOKafkaClient, "_wait_on_metadata", "transaction: _send_batched"),
    Internal(faust.transport.consumer.Consumer, "_commit", "transaction: _commit_plain"),
    # app/engine/producer.py
    Internal(faust_aiokafka.Producer, "_settings_extra", "producer: BatchProducer"),
    Internal(faust_aiokafka.Producer, "_producer", "producer: BatchProducer.flush"),
    Internal(
        faust.transport.consumer.TransactionManager,
        "_tps_to_transactional_ids",
        "producer: BatchTransactionManager (own_producers ids)",
    ),
    Internal(
        faust.transport.consumer.TransactionManager,
        "_tps_to_active_tpgs",
        "producer: BatchTransactionManager._tps_to_transactional_ids",
    ),
    # app/engine/consumer.py: the gapless consumer and the batch tap.
    Internal(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", "consumer"),
    Internal(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", "consumer"),
    Internal(AIOKafkaConsumer, "_fetch_max_wait_ms", "consumer: FastFetchConsumerThread"),
    Internal(AIOKafkaConsumer, "_subscription", "consumer: GaplessConsumer.read_to_end_at"),
    Internal(AIOKafkaConsumer, "_subscription", "input_reader: InputReader._ends"),
    Internal(AIOKafkaConsumer, "_coordinator", "consumer: seek_to_committed"),
    Internal(
        AIOKafkaConsumer,
        "_client",
        "restore: committed_readers; standby: _tail",
    ),
    Internal(faust_aiokafka.Consumer, "_new_consumer_thread", "consumer: GaplessConsumer"),
    Internal(
        faust.transport.consumer.ThreadDelegateConsumer, "_thread", "consumer: GaplessConsumer"
    ),
    Internal(faust.transport.consumer.Consumer, "_wait_next_records", "consumer: getmany"),
    Internal(faust.transport.consumer.Consumer, "_buffered_partitions", "consumer: getmany"),
    Internal(faust.transport.consumer.Consumer, "_to_message", "consumer: getmany"),
    Internal(faust.transport.consumer.Consumer, "_read_offset", "consumer: getmany"),
    # app/engine/consumer.py: a static member leaves the group when it stops.
    Internal(
        faust_aiokafka.AIOKafkaConsumerThread, "_consumer", "consumer: FastFetchConsumerThread"
    ),
    Internal(GroupCoordinator, "_maybe_leave_group", "consumer: leave_group_when_closed"),
    Internal(GroupCoordinator, "_group_instance_id", "consumer: leave_group_when_closed"),
    Internal(GroupCoordinator, "_send_req", "consumer: leave_group_when_closed"),
    # app/engine/restore.py: Faust's recovery minus reading the changelogs.
    Internal(faust.tables.manager.TableManager, "_recovery", "restore: OwnRestoreTableManager"),
    Internal(faust.tables.recovery.Recovery, "_resume_streams", "restore: OwnRestoreRecovery"),
    # app/engine/restore.py: standby partitions handed to app/engine/standby.py.
    Internal(faust.tables.manager.TableManager, "_changelogs", "restore: OwnRestoreRecovery"),
    # app/engine/web_server.py: JSON answers to what aiohttp's parser rejects.
    Internal(aiohttp.web_server.Server, "_loop", "web_server: _JsonErrorServer"),
    Internal(aiohttp.web_server.Server, "_kwargs", "web_server: _JsonErrorServer"),
    Internal(aiohttp.web.AppRunner, "_make_server", "web_server: _JsonErrorRunner"),
    Internal(faust.web.drivers.aiohttp.Web, "_runner", "web_server: WebServer"),
    # app/engine/faust_app.py and app/engine/worker.py
    Internal(faust.App, "_new_transport", "faust_app: StockTrackerApp"),
    Internal(faust.App, "_new_web", "faust_app: StockTrackerApp"),
    Internal(mode.Worker, "_on_sigterm", "worker: StockTrackerWorker"),
    Internal(mode.Worker, "_on_sigint", "worker: StockTrackerWorker"),
    # app/engine/group.py: which worker holds which partition.
    Internal(
        faust.assignor.partition_assignor.PartitionAssignor,
        "_external_tps_url",
        "group: partition_urls",
    ),
    # aiokafka's per-partition fetch state, read by consumer: read_to_end_at.
    Internal(SubscriptionState, "subscription", "consumer: read_to_end_at"),
    Internal(TopicPartitionState, "has_valid_position", "consumer: read_to_end_at"),
    Internal(TopicPartitionState, "lso", "consumer: read_to_end_at"),
    Internal(TopicPartitionState, "position", "consumer: read_to_end_at (ingest's reports)"),
    Internal(SubscriptionState, "subscription", "input_reader: InputReader._ends"),
    Internal(TopicPartitionState, "has_valid_position", "input_reader: InputReader._ends"),
    Internal(TopicPartitionState, "lso", "input_reader: InputReader._ends (at end, lag)"),
    Internal(TopicPartitionState, "position", "input_reader: InputReader._ends"),
    Internal(
        faust.tables.manager.TableManager,
        "_update_channels",
        "restore: OwnRestoreTableManager.on_start",
    ),
)

REIMPLEMENTED = {
    # GaplessConsumer.getmany is Faust's, minus dropping records (app/engine/consumer.py).
    "faust.transport.consumer.Consumer.getmany": (
        faust.transport.consumer.Consumer.getmany,
        "4b168d84882a70d6",
    ),
    # OwnRestoreTableManager.on_start is Faust's, without its 1 s sleep (app/engine/restore.py).
    "faust.tables.manager.TableManager.on_start": (
        faust.tables.manager.TableManager.on_start,
        "365dd25fbc0e0684",
    ),
    # _JsonErrorServer.__call__ is aiohttp's, with another handler class.
    "aiohttp.web_server.Server.__call__": (aiohttp.web_server.Server.__call__, "c5700549e688b164"),
}


def has_internal(owner: type, name: str) -> bool:
    """Whether ``owner`` (or a base) defines ``name``: as a class attribute, or as an
    instance attribute assigned in its source (``self.name = ...`` or annotated)."""
    if hasattr(owner, name):
        return True
    for cls in owner.__mro__:
        if cls.__module__ == "builtins":
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        if f"self.{name} =" in source or f"self.{name}:" in source:
            return True
    return False


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.owner.__name__}.{i.name}")
def test_the_internal_still_exists(internal: Internal) -> None:
    assert has_internal(internal.owner, internal.name), (
        f"{internal.owner.__module__}.{internal.owner.__qualname__}.{internal.name} is gone "
        f"in this version; the engine uses it in {internal.used_by}"
    )


@pytest.mark.parametrize("name", sorted(REIMPLEMENTED))
def test_a_reimplemented_upstream_method_is_unchanged(name: str) -> None:
    function, pinned = REIMPLEMENTED[name]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == pinned, (
        f"{name} changed upstream (source hash {digest}, pinned {pinned}): review the "
        "engine's copy of it, then pin the new hash"
    )


def test_the_inventory_can_fail() -> None:
    assert not has_internal(faust.stores.rocksdb.Store, "_no_such_internal")


def test_the_rebalance_listener_reaches_the_consumers_own_hooks() -> None:
    """``GaplessConsumer.rebalancing`` (app/engine/consumer.py) is set by overriding the
    consumer's ``on_partitions_revoked`` and ``on_partitions_assigned``: aiokafka's
    rebalance listener must reach exactly those, through Faust's consumer thread."""
    listener = faust_aiokafka.ConsumerRebalanceListener
    assert "thread.on_partitions_revoked(" in inspect.getsource(listener.on_partitions_revoked)
    assert "on_partitions_assigned(" in inspect.getsource(listener.on_partitions_assigned)
    thread = faust.transport.consumer.ConsumerThread
    assert "threadsafe_partitions_revoked(" in inspect.getsource(thread.on_partitions_revoked)
    assert "threadsafe_partitions_assigned(" in inspect.getsource(thread.on_partitions_assigned)
    delegate = faust.transport.consumer.ThreadDelegateConsumer
    revoked = inspect.getsource(delegate.threadsafe_partitions_revoked)
    assigned = inspect.getsource(delegate.threadsafe_partitions_assigned)
    assert "self.on_partitions_revoked," in revoked
    assert "self.on_partitions_assigned," in assigned
