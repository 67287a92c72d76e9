"""The Faust app class of the stock tracker and how it is built from the settings.

:class:`StockTrackerApp` is Faust's ``App`` with the start-up steps the contract needs
before consuming (topics created with the right replication, partition counts learnt)
and the engine's own transport classes (app/engine/consumer.py, app/engine/producer.py).
:func:`build_app` passes every Faust setting the engine relies on, with the reason for
each. Nothing here declares topics, tables or agents: those modules import the one
instance (app/engine/instance.py) and register themselves on it.
"""

from __future__ import annotations

import sys
from typing import Any

import faust

from app.domain.settings import Settings
from app.engine.admin import ReplicationError, ensure_topics, replication_factor
from app.engine.consumer import GaplessConsumer
from app.engine.producer import BatchProducer, BatchTransactionManager
from app.engine.web_server import WebServer


class StockTrackerApp(faust.App):
    """The Faust app, plus the start-up steps the contract needs before consuming."""

    settings: Settings
    """The validated settings the app was built from."""
    own_topics: list[Any]
    """Every topic the app declares (app/engine/topics.py), created at start."""
    partition_counts: dict[str, int]
    """Topic name -> partitions it has on the broker, learnt at start."""

    async def on_first_start(self) -> None:
        settings = self.settings
        await super().on_first_start()
        try:
            replicas = await replication_factor(
                settings.broker_host_ports, settings.replication_factor
            )
        except ReplicationError as exc:
            print(f"stock-tracker: bad setting: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        # Faust reads it when it declares its own topics (changelogs, internal ones),
        # which happens after this.
        self.conf.topic_replication_factor = replicas
        changelogs = [
            (t.changelog_topic.get_topic_name(), {"cleanup.policy": "compact"})
            for t in self.tables.values()
        ]
        counts = await ensure_topics(
            settings.broker_host_ports,
            [(t.get_topic_name(), dict(t.config or {})) for t in self.own_topics] + changelogs,
            settings.topic_partitions,
            replicas,
        )
        self.partition_counts.update(counts)

    def _new_transport(self) -> Any:
        transport: Any = super()._new_transport()
        transport.Consumer = GaplessConsumer
        transport.Producer = BatchProducer
        transport.TransactionManager = BatchTransactionManager
        return transport

    def _new_web(self) -> Any:
        return WebServer(self)


def build_app(settings: Settings) -> StockTrackerApp:
    """The app, configured for the engine: raw bytes, one transaction per batch, own
    restore, own worker."""
    app = StockTrackerApp(
        settings.app_id,
        broker=settings.broker_url,
        store=settings.store_url,
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        # Workers tell each other this URL when they join the group (app/serving/cluster.py).
        canonical_url=settings.advertised_url,
        topic_partitions=settings.topic_partitions,
        # Resolved against the cluster at start (StockTrackerApp.on_first_start).
        topic_replication_factor=settings.replication_factor or 1,
        processing_guarantee=settings.processing_guarantee,
        key_serializer="raw",
        value_serializer="raw",
        # Every batch commits its own transaction (app/engine/transaction.py); Faust's
        # timer-driven commit would otherwise commit older offsets over newer ones.
        broker_commit_every=1 << 40,
        broker_commit_interval=1e9,
        stream_wait_empty=False,
        # Ingest and the tracker get one fetch per batch (app/engine/consumer.py's tap).
        broker_max_poll_records=settings.batch_size,
        # A batch's records are sent just before its commit, and a produce request takes
        # one record batch per partition: with the default 16 kB batches, a commit of a
        # few thousand events waited on dozens of sequential round trips.
        producer_max_batch_size=512 * 1024,
        # A worker killed with SIGKILL never leaves the group; the broker notices after
        # the session timeout (FAILURE_DETECTION_SECONDS). With static membership
        # (WORKER_INSTANCE_ID) a worker restarted within it takes its own place back at
        # once; without, it waits that long in its first rebalance.
        broker_session_timeout=settings.failure_detection_seconds,
        broker_heartbeat_interval=settings.heartbeat_seconds,
        consumer_group_instance_id=settings.worker_instance_id or None,
        # Faust refuses a session timeout longer than the request timeout (default 90 s).
        broker_request_timeout=max(90.0, settings.failure_detection_seconds),
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=1e9,
        # Faust's assignor places the standbys (another worker than the active one); they
        # are kept warm by app/engine/standby.py, not by Faust's recovery.
        table_standby_replicas=settings.table_standby_replicas,
        # Tables are restored by app/engine/restore.py, not by Faust's recovery.
        TableManager="app.engine.restore:OwnRestoreTableManager",
        web_enabled=True,
        logging_config=None,
        # Checks DATA_DIR, WEB_PORT and BROKER_URL before anything starts
        # (app/engine/startup.py); SIGTERM: /health says "stopping" at once, and the
        # process exits within seconds.
        Worker="app.engine.worker:StockTrackerWorker",
    )
    app.settings = settings
    app.own_topics = []
    app.partition_counts = {}
    return app
