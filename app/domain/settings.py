"""Settings: one frozen object, read from the environment and validated once at start.

Every variable of the contract's settings section lives here with its default. A bad
value raises :class:`SettingsError` whose message is one line naming the variable and
what is allowed; ``app/engine/instance.py`` turns it into that one line on stderr and exit 2. A
variable set to the empty string is a bad value unless the setting's default is empty:
``REORDER_POINT=`` is a typo or an unset shell variable far more often than a wish for
the default.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

ProcessingGuarantee = Literal["exactly_once", "at_least_once"]
JoinRead = Literal["direct", "repartition"]

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value the worker cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The worker's configuration. Field names are the environment variables, lowercased."""

    broker_url: str = "kafka://localhost:9092"
    """Kafka bootstrap servers, ``kafka://host:port`` (several separated by ``;``)."""
    app_id: str = "stock-tracker"
    """Consumer group and prefix of internal topics; two apps with one id share work."""
    topic_prefix: str = ""
    """Prepended to every topic name of the contract (``orders`` -> ``<prefix>orders``);
    empty by default. Lets several deployments, or test runs, share one cluster."""
    web_port: int = 6066
    """Port of the worker's HTTP server (views, dashboard)."""
    web_host: str = "0.0.0.0"
    """Interface the HTTP server binds to."""
    web_advertised_url: str = ""
    """How other workers reach this worker's HTTP server, ``http://host:port``; they
    forward requests for keys this worker owns to it. Default: ``http://`` + WEB_HOST (or
    this machine's host name when WEB_HOST is 0.0.0.0) + ``:`` + WEB_PORT."""
    peer_timeout_seconds: float = 5.0
    """Longest a worker waits for another worker when it routes or gathers a request."""
    topic_partitions: int = 4
    """Partitions of every topic the app creates; the unit of parallelism."""
    worker_instance_id: str = ""
    """Static group membership: this worker's ``group.instance.id``, unique among the
    workers of one APP_ID and the same across its restarts. A worker restarted with the
    same id within FAILURE_DETECTION_SECONDS gets its partitions back without a
    rebalance. Empty (the default): dynamic membership."""
    failure_detection_seconds: float = 10.0
    """The group's session timeout: a worker that sends no heartbeat for this long is
    declared dead and its partitions move. Heartbeats go every third of it (at most 2 s)."""
    replication_factor: int | None = None
    """Replicas of every topic the app creates (outputs, the SKU-keyed topic, changelogs,
    Faust's internal topics). Default (None): 3 when the cluster has 3 brokers or more,
    else 1; with 3 or more, the topics also get ``min.insync.replicas`` 2."""
    table_standby_replicas: int = 1
    """Other workers that keep a warm copy of each partition's tables, tailing its
    changelogs, so a takeover replays only a tail (app/engine/standby.py). A worker never
    holds a standby of a partition it processes: with one worker there is none."""
    store_url: str = "rocksdb://"
    """Table store: ``rocksdb://`` (on disk under DATA_DIR) or ``memory://``."""
    data_dir: Path = Path("data")
    """Folder for the worker's local state (RocksDB tables, markers)."""
    store_memory_mb: int = 64
    """Memory (MiB) of all the worker's RocksDB stores together: one block cache holding
    data, index and filter blocks, with the memtables charged to it (half of it at most)."""
    reorder_point: int = 20
    """A level below this opens a supplier order (if none is open)."""
    reorder_target: int = 100
    """A supplier order brings the level up to this: quantity = target - level."""
    tumbling_seconds: int = 60
    """Size of the tumbling demand windows."""
    hopping_seconds: int = 300
    """Size of the hopping demand windows."""
    hopping_step_seconds: int = 60
    """Step between hopping windows; HOPPING_SECONDS must be a multiple of it."""
    window_grace_seconds: int = 10
    """A window closes when stream time reaches its end plus this."""
    expedite_threshold: int = 2
    """More orders than this in one hopping window of a SKU raise an expedite."""
    max_future_seconds: int = 3600
    """How far (seconds) an event's ts may be ahead of the worker's clock; a later one is
    dead-lettered, so one far-future event cannot push stream time ahead for everyone."""
    broker_wait_seconds: float = 30.0
    """How long a starting worker waits for BROKER_URL to accept a connection before it
    gives up (exit code 2)."""
    window_idle_close_seconds: float = 0.0
    """Idle close: a partition of the SKU-keyed stream that received no event for this
    many wall seconds has its stream time moved on by the wall time elapsed since its
    last event, so its due windows close without waiting for the next order. 0 = off:
    windows close on event time alone (replays give the same results)."""
    max_waiting_requests: int = 1000
    """Most ``GET /orders/{id}?wait=S`` requests one worker holds at once (its own and
    those other workers forwarded); past it such a request answers 503 at once."""
    processing_guarantee: ProcessingGuarantee = "exactly_once"
    """Kafka transactions (default) or at-least-once; only change it to measure."""
    join_read: JoinRead = "direct"
    """How the join gets its input. ``direct``: every worker reads every input partition
    and applies the events of the SKUs it owns, one transaction from an order to its
    status (agents/direct.py). ``repartition``: each worker reads its share of the input
    partitions and forwards the events by SKU through an internal topic, two
    transactions (agents/ingest.py); parsing then scales out with the workers."""
    dedupe_seconds: int = 86_400
    """How long (event time) an order_id / event_id is remembered per SKU."""
    closed_window_retention_seconds: int = 3_600
    """How long (stream time) closed windows stay readable over HTTP."""
    order_status_retention_seconds: int = 0
    """How long (stream time past the order's ts) an order's status stays readable over
    HTTP (``/orders/{id}``); 0 = for ever (the state on disk then grows with orders)."""
    batch_size: int = 10_000
    """Most records a fetch hands to ingest or the tracker, and most events the tracker
    applies per transaction; state is written once per key per batch."""
    batch_envelopes: int = 200
    """Most envelopes (batches of ingest) the tracker applies per transaction."""
    batch_window_s: float = 0.05
    """Longest the dead-letter feed waits to fill a batch (ingest and the tracker take
    whatever a fetch brings, app/engine/consumer.py)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); validate all."""
        env = os.environ if environ is None else environ
        default = cls()
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            raw = raw.strip()
            current = getattr(default, f.name)
            if raw == "":
                # A variable set to nothing is almost always a mistake (a typo in a
                # compose file, an unset shell variable in `X=$Y`); taking the default
                # silently would hide it. Only settings whose default is empty accept it.
                if current == "":
                    continue
                raise SettingsError(
                    f"{name} is set but empty; unset it to use the default ({_shown(current)})"
                )
            parser = _PARSERS.get(f.name)
            if parser is not None:
                values[f.name] = parser(name, raw)
            elif isinstance(current, bool):  # pragma: no cover - no bool settings yet
                values[f.name] = _bool(name, raw)
            elif isinstance(current, int):
                values[f.name] = _int(name, raw, minimum=_MINIMUMS.get(f.name, 1))
            elif isinstance(current, float):
                values[f.name] = _float(name, raw)
            elif isinstance(current, Path):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate(given=frozenset(name for name in values))
        return settings

    def validate(self, given: frozenset[str] = frozenset()) -> None:
        """Check the rules that tie settings together.

        ``given`` holds the fields the environment set. When a rule ties two settings
        and only one of them was set, the message names that one: the user who wrote
        ``HOPPING_SECONDS=7`` looks for HOPPING_SECONDS, not for the step left at its
        default.
        """
        if self.reorder_target <= self.reorder_point:
            if "reorder_point" in given and "reorder_target" not in given:
                raise SettingsError(
                    f"REORDER_POINT must be less than REORDER_TARGET "
                    f"({self.reorder_target}), got {self.reorder_point}"
                )
            raise SettingsError(
                f"REORDER_TARGET must be greater than REORDER_POINT "
                f"({self.reorder_point}), got {self.reorder_target}"
            )
        blame_size = "hopping_seconds" in given and "hopping_step_seconds" not in given
        if self.hopping_step_seconds > self.hopping_seconds:
            if blame_size:
                raise SettingsError(
                    f"HOPPING_SECONDS must be at least HOPPING_STEP_SECONDS "
                    f"({self.hopping_step_seconds}) and a multiple of it, "
                    f"got {self.hopping_seconds}"
                )
            raise SettingsError(
                f"HOPPING_STEP_SECONDS must be at most HOPPING_SECONDS "
                f"({self.hopping_seconds}), got {self.hopping_step_seconds}"
            )
        if self.hopping_seconds % self.hopping_step_seconds:
            if "hopping_seconds" in given or "hopping_step_seconds" not in given:
                raise SettingsError(
                    f"HOPPING_SECONDS must be a multiple of HOPPING_STEP_SECONDS "
                    f"({self.hopping_step_seconds}), got {self.hopping_seconds}"
                )
            raise SettingsError(
                f"HOPPING_STEP_SECONDS must divide HOPPING_SECONDS "
                f"({self.hopping_seconds}), got {self.hopping_step_seconds}"
            )

    @property
    def broker_host_ports(self) -> str:
        """BROKER_URL as aiokafka's ``bootstrap_servers`` (``host:port,host:port``)."""
        return ",".join(u.split("://", 1)[-1].rstrip("/") for u in self.broker_url.split(";"))

    @property
    def heartbeat_seconds(self) -> float:
        """How often the worker heartbeats the group: at most a third of the session
        timeout (a member that misses two in a row is still alive), and every 0.5 s: a
        heartbeat's answer is also how a member learns that the group rebalances, so
        this is how long a survivor may take to notice that a dead worker's partitions
        are to be taken over (a heartbeat is one small request)."""
        return min(0.5, self.failure_detection_seconds / 3)

    @property
    def advertised_url(self) -> str:
        """WEB_ADVERTISED_URL, or the default it documents."""
        if self.web_advertised_url:
            return self.web_advertised_url
        host = self.web_host
        if host in {"0.0.0.0", "::", ""}:
            host = socket.gethostname()
        return f"http://{host}:{self.web_port}"


def _shown(value: object) -> str:
    return str(value) if not isinstance(value, str) else repr(value)


def _int(name: str, raw: str, *, minimum: int, maximum: int | None = None) -> int:
    bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer {bound}, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise SettingsError(f"{name} must be an integer {bound}, got {raw!r}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number > 0, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a number > 0, got {raw!r}")
    return value


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number >= 0, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:  # pragma: no cover - no bool settings yet
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _choice(allowed: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _broker_url(name: str, raw: str) -> str:
    for part in raw.split(";"):
        scheme, sep, hostport = part.partition("://")
        host, colon, port = (hostport if sep else scheme).rstrip("/").rpartition(":")
        if (sep and scheme != "kafka") or not colon or not host or not port.isdigit():
            raise SettingsError(
                f"{name} must look like kafka://host:port (several joined by ';'), got {raw!r}"
            )
        if not 0 < int(port) < 65536:
            raise SettingsError(f"{name} has a port out of range 1-65535: {raw!r}")
    return raw if "://" in raw else "kafka://" + raw


def _store_url(name: str, raw: str) -> str:
    if raw.split("://", 1)[0] not in {"rocksdb", "memory"} or "://" not in raw:
        raise SettingsError(f"{name} must be rocksdb:// or memory://, got {raw!r}")
    return raw


def _app_id(name: str, raw: str) -> str:
    # The id prefixes topic names, so it must be a legal Kafka topic name part.
    ok = all(c.isascii() and (c.isalnum() or c in "._-") for c in raw)
    if not ok or len(raw) > 100:
        raise SettingsError(f"{name} must be 1-100 characters of [A-Za-z0-9._-], got {raw!r}")
    return raw


def _topic_prefix(name: str, raw: str) -> str:
    ok = all(c.isascii() and (c.isalnum() or c in "._-") for c in raw)
    if not ok or len(raw) > 100:
        raise SettingsError(f"{name} must be up to 100 characters of [A-Za-z0-9._-], got {raw!r}")
    return raw


def _http_url(name: str, raw: str) -> str:
    scheme, sep, rest = raw.partition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if scheme not in {"http", "https"} or not sep or not colon or not host or "/" in host:
        raise SettingsError(f"{name} must look like http://host:port, got {raw!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name} has no port in 1-65535: {raw!r}")
    return raw.rstrip("/")


def _instance_id(name: str, raw: str) -> str:
    # Kafka's rule for group.instance.id (JoinGroupRequest.validateGroupInstanceId).
    ok = all(c.isascii() and (c.isalnum() or c in "._-") for c in raw)
    if not ok or len(raw) > 249 or raw in {".", ".."}:
        raise SettingsError(f"{name} must be 1-249 characters of [A-Za-z0-9._-], got {raw!r}")
    return raw


MIN_FAILURE_DETECTION_S = 6.0
MAX_FAILURE_DETECTION_S = 1800.0
"""Kafka's defaults of ``group.min.session.timeout.ms`` and ``group.max.session.timeout.ms``:
a session timeout outside them makes the broker refuse the worker's JoinGroup."""


def _failure_detection(name: str, raw: str) -> float:
    bound = f"a number of seconds between {MIN_FAILURE_DETECTION_S:g} and "
    bound += f"{MAX_FAILURE_DETECTION_S:g} (the broker's group session timeout bounds)"
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {bound}, got {raw!r}") from None
    if not MIN_FAILURE_DETECTION_S <= value <= MAX_FAILURE_DETECTION_S:
        raise SettingsError(f"{name} must be {bound}, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    return _int(name, raw, minimum=1, maximum=65535)


def _literal(tp: object) -> Callable[[str, str], str]:
    return _choice(cast(tuple[str, ...], get_args(tp)))


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "broker_url": _broker_url,
    "store_url": _store_url,
    "app_id": _app_id,
    "topic_prefix": _topic_prefix,
    "web_port": _port,
    "web_advertised_url": _http_url,
    "topic_partitions": lambda n, r: _int(n, r, minimum=1, maximum=1000),
    "replication_factor": lambda n, r: _int(n, r, minimum=1, maximum=32767),
    "store_memory_mb": lambda n, r: _int(n, r, minimum=16, maximum=1_048_576),
    "processing_guarantee": _literal(ProcessingGuarantee),
    "join_read": _literal(JoinRead),
    "window_idle_close_seconds": _non_negative_float,
    "worker_instance_id": _instance_id,
    "failure_detection_seconds": _failure_detection,
}

# Settings where 0 is meaningful; every other integer must be >= 1.
_MINIMUMS: dict[str, int] = {
    "reorder_point": 0,
    "window_grace_seconds": 0,
    "expedite_threshold": 0,
    "closed_window_retention_seconds": 0,
    "order_status_retention_seconds": 0,
    "table_standby_replicas": 0,
}
