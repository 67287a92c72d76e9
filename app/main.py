"""The composition root: ``faust -A app worker`` loads ``app.app`` from here.

It only builds. The app itself comes from app/engine/instance.py (settings read once,
the Faust app configured for the engine); importing the modules below registers their
topics, tables, agents, views and commands on it. Every import points down the layers
(docs/architecture.md): nothing imports this module except the package's lazy ``app``.
"""

from __future__ import annotations

from typing import Any

# Imported to register themselves on the app: tables, agents, HTTP views, commands.
import agents  # noqa: F401
import tables  # noqa: F401
from app.engine import memory, standby  # noqa: F401
from app.engine.admin import ClusterProbe
from app.engine.instance import app, settings
from app.serving import dashboard, metrics, web  # noqa: F401
from app.tools import commands  # noqa: F401

__all__ = ["app", "settings"]


def _watch_cluster() -> None:
    """Probe the cluster every 2 s for ``/health`` (app/engine/admin.py)."""
    from app.engine import topics

    def our_topics() -> list[str]:
        consumer: Any = app.consumer
        try:
            assigned = {tp.topic for tp in consumer.assignment()}
        except Exception:
            assigned = set()
        return sorted(assigned | {t.get_topic_name() for t in topics.ALL})

    probe = ClusterProbe(settings.broker_host_ports, our_topics)
    app.timer(2.0, name="cluster-probe")(probe.run)


_watch_cluster()
