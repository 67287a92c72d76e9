"""Who holds which partition in the consumer group, as Faust's assignor last told us.

Faust's assignor learns every worker's ``canonical_url`` (``WEB_ADVERTISED_URL``) at
each rebalance; the app's HTTP routing between workers (app/serving/cluster.py) reads it
through these two functions only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.types import TP

from app.engine.instance import app


def partition_urls() -> Mapping[TP, str]:
    """Every assigned (topic, partition) -> URL of the worker that processes it.

    Faust keeps it in its assignor's private ``_external_tps_url`` (no public accessor).
    """
    assignor: Any = app.assignor
    urls: Mapping[TP, str] = assignor._external_tps_url
    return urls


def worker_urls() -> list[str]:
    """The URL of every worker in the last assignment."""
    assignor: Any = app.assignor
    return list(assignor.external_topic_distribution)
