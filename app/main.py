"""Builds the Faust app from the settings and registers tables, agents, views and commands.

This module only builds; agents (``agents/``) process, tables (``tables/``) store, the
pure rules (``app/rules/``) decide.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import faust

from app.faults import quiet_client_logs
from app.logs import quiet_expected_retries
from app.settings import Settings, SettingsError


def load_settings() -> Settings:
    """Settings from the environment, or one line on stderr and exit code 2."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"stock-tracker: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class StockTrackerApp(faust.App):
    """The Faust app, plus the start-up steps the contract needs before consuming."""

    async def on_first_start(self) -> None:
        from app.admin import ReplicationError, ensure_topics, replication_factor
        from app.topics import ALL, partition_counts

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
            [(t.get_topic_name(), dict(t.config or {})) for t in ALL] + changelogs,
            settings.topic_partitions,
            replicas,
        )
        partition_counts.update(counts)

    def _new_transport(self) -> Any:
        from app.consumer import GaplessConsumer
        from app.transaction import BatchProducer, BatchTransactionManager

        transport: Any = super()._new_transport()
        transport.Consumer = GaplessConsumer
        transport.Producer = BatchProducer
        transport.TransactionManager = BatchTransactionManager
        return transport


settings = load_settings()

# Before any client starts: the broker's "not yet" answers at start-up, which aiokafka
# retries by itself, are logged at INFO (app/logs.py).
quiet_expected_retries()

# A worker allocates a few container objects per event and keeps hundreds of thousands
# alive (duplicate memory, windows, staged batches); with the default threshold of 700
# the cyclic collector ran every few hundred events and took about a fifth of the CPU.
# The hot path makes next to no reference cycles, so collect far less often.
gc.set_threshold(100_000, 50, 100)

app = StockTrackerApp(
    settings.app_id,
    broker=settings.broker_url,
    store=settings.store_url,
    datadir=str(settings.data_dir),
    web_port=settings.web_port,
    web_bind=settings.web_host,
    # Workers tell each other this URL when they join the group (app/cluster.py).
    canonical_url=settings.advertised_url,
    topic_partitions=settings.topic_partitions,
    # Resolved against the cluster at start (StockTrackerApp.on_first_start).
    topic_replication_factor=settings.replication_factor or 1,
    processing_guarantee=settings.processing_guarantee,
    key_serializer="raw",
    value_serializer="raw",
    # Every batch commits its own transaction (app/transaction.py); Faust's timer-driven
    # commit would otherwise commit older offsets over newer ones.
    broker_commit_every=1 << 40,
    broker_commit_interval=1e9,
    stream_wait_empty=False,
    # Ingest and the tracker get one fetch per batch (app/consumer.py's batch tap).
    broker_max_poll_records=settings.batch_size,
    # A batch's records are sent just before its commit, and a produce request takes
    # one record batch per partition: with the default 16 kB batches, a commit of a
    # few thousand events waited on dozens of sequential round trips.
    producer_max_batch_size=512 * 1024,
    # A worker killed with SIGKILL never leaves the group; the broker notices after the
    # session timeout, and a restarted worker waits that long in its first rebalance.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=2.0,
    consumer_auto_offset_reset="earliest",
    table_cleanup_interval=1e9,
    # Faust's assignor places the standbys (another worker than the active one); they
    # are kept warm by tables/standby.py, not by Faust's recovery.
    table_standby_replicas=settings.table_standby_replicas,
    # Tables are restored by tables/restore.py, not by Faust's recovery.
    TableManager="tables.restore:OwnRestoreTableManager",
    web_enabled=True,
    logging_config=None,
    # Checks DATA_DIR, WEB_PORT and BROKER_URL before anything starts (app/startup.py);
    # SIGTERM: /health says "stopping" at once, and the process exits within seconds.
    Worker="app.worker:StockTrackerWorker",
)


def _watch_cluster() -> None:
    """Probe the cluster every 2 s for ``/health`` (app/admin.py, app/health.py)."""
    from app.admin import ClusterProbe

    def our_topics() -> list[str]:
        from app.topics import ALL

        consumer: Any = app.consumer
        try:
            assigned = {tp.topic for tp in consumer.assignment()}
        except Exception:
            assigned = set()
        return sorted(assigned | {t.get_topic_name() for t in ALL})

    probe = ClusterProbe(settings.broker_host_ports, our_topics)
    app.timer(2.0, name="cluster-probe")(probe.run)


def _register() -> None:
    # Imported for their side effect: each module declares its tables, agents or views
    # on ``app``. Done after ``app`` exists because they import it.
    import agents  # noqa: F401
    import app.commands
    import app.dashboard
    import app.metrics
    import app.web  # noqa: F401
    import tables  # noqa: F401


_register()
_watch_cluster()
quiet_client_logs()
