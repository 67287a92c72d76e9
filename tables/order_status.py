"""``order-status``: every processed order by ``order_id``, and its expiry index.

Written in the same transaction as the order's ``order-status`` message, so the table is
never ahead of or behind the topic. With ORDER_STATUS_RETENTION_SECONDS set, each status
implies a local key ordered by the order's ts (``EXPIRY_INDEX``), kept by the store on
every write path (app/engine/stores.py, ``index_with``), and the tracker deletes the
statuses whose retention is over; unset, no index is kept and statuses stay.
"""

from __future__ import annotations

import orjson

from app.domain.events import parse_ts
from app.engine.instance import settings
from app.engine.stores import LOCAL_PREFIX, index_with
from tables.base import TimeIndex, raw_table

order_status = raw_table("order-status", "order_id -> the order's status record")

EXPIRY = LOCAL_PREFIX + b"t"


def ts_of(value: bytes) -> float:
    """The order's event time, from its status document."""
    return parse_ts(orjson.loads(value)["ts"])


EXPIRY_INDEX = TimeIndex(EXPIRY)


def keep_expiry_index() -> None:
    """Keep the expiry index (the tracker then deletes statuses past their retention)."""
    index_with(order_status, EXPIRY, "expiry-1", EXPIRY_INDEX.derive(ts_of))


if settings.order_status_retention_seconds > 0:
    keep_expiry_index()
