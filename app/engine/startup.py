"""Start-up checks of ``faust -A app worker``: the causes a worker cannot run with.

Before Faust starts anything (and before it would fail deep inside with a traceback),
the worker checks that DATA_DIR is a writable folder, that WEB_PORT can be bound, that
BROKER_URL accepts a connection within BROKER_WAIT_SECONDS, and that no running worker
has its WORKER_INSTANCE_ID (:func:`check_instance_id`). A failure is one line
on stderr naming the cause and the setting, and exit code 2, like a bad setting
(app/engine/worker.py). Only the ``worker`` command runs them: other commands (``inject``,
``expect``, ...) need neither the port nor the data folder.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from app.domain.settings import Settings


class StartupError(Exception):
    """The worker cannot start; ``str(exc)`` is the one line that says why."""


def check_data_dir(path: Path) -> None:
    """DATA_DIR exists (created if missing) as a folder this process can write in."""
    if path.exists() and not path.is_dir():
        raise StartupError(f"DATA_DIR is not a folder: {str(path)!r} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"DATA_DIR cannot be created: {str(path)!r} ({_reason(exc)})") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StartupError(f"DATA_DIR is not writable: {str(path)!r} ({_reason(exc)})") from None


def check_web_port(host: str, port: int) -> None:
    """WEB_PORT is free on WEB_HOST: bound (as aiohttp will, with SO_REUSEADDR), released."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise StartupError(f"WEB_HOST {host!r} cannot be resolved ({_reason(exc)})") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"WEB_PORT {port} is already in use on {host} "
                        "(another worker or program listens there)"
                    ) from None
                raise StartupError(
                    f"WEB_PORT {port} cannot be bound on WEB_HOST {host} ({_reason(exc)})"
                ) from None


def wait_for_broker(host_ports: str, wait_s: float) -> None:
    """Some broker of BROKER_URL accepts a TCP connection within ``wait_s`` seconds."""
    servers = []
    for item in host_ports.split(","):
        host, _, port = item.strip().rpartition(":")
        servers.append((host.strip("[]"), int(port)))
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        for address in servers:
            remaining = deadline - time.monotonic()
            try:
                with socket.create_connection(address, timeout=max(0.1, min(2.0, remaining))):
                    return
            except OSError as exc:
                last = f"{address[0]}:{address[1]}: {_reason(exc)}"
        if time.monotonic() >= deadline:
            raise StartupError(
                f"BROKER_URL unreachable: no broker of {host_ports} accepted a connection "
                f"within {wait_s:g} s (BROKER_WAIT_SECONDS); last error: {last}"
            )
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


INSTANCE_HEADER = "X-Stock-Tracker-Instance"
"""The header of a worker's ``/health`` answers that names its WORKER_INSTANCE_ID."""

INSTANCE_CHECK_S = 3.0
"""Longest one look at the consumer group may take; a group that cannot be described in
it is not checked (Faust's own join then decides)."""


def check_instance_id(settings: Settings, poll_s: float = 1.0) -> None:
    """No running worker of the group has this worker's WORKER_INSTANCE_ID.

    The broker hands a static member's place, and its last assignment, to whoever joins
    with its instance id. A second worker with the same id would fence the first one and
    take an assignment made for the first one's URL, on which Faust's assignor stops
    (an assertion in its coordinator task: the worker then never becomes ready). So
    before joining: if the group holds a member with this id whose URL is another
    worker's, that URL is asked for its ``/health``; when it answers with the same id
    (:data:`INSTANCE_HEADER`), the start fails with that URL. When it does not answer,
    the member is this worker's former self at another address (a restart with another
    WEB_PORT or WEB_ADVERTISED_URL): the start waits, at most FAILURE_DETECTION_SECONDS
    and a little, for the broker to drop it, so the join gets an assignment of its own.
    A restart at the same address takes its place back at once, as static membership
    is for.
    """
    instance = settings.worker_instance_id
    if not instance:
        return
    deadline = time.monotonic() + settings.failure_detection_seconds + 5.0
    waiting = False
    while True:
        # A loop of its own, never the thread's current one: Faust takes that one later.
        loop = asyncio.new_event_loop()
        try:
            url = loop.run_until_complete(
                asyncio.wait_for(
                    member_url(settings.broker_host_ports, settings.app_id, instance),
                    INSTANCE_CHECK_S,
                )
            )
        except Exception:
            return
        finally:
            loop.close()
        if url is None or url.rstrip("/") == settings.advertised_url.rstrip("/"):
            return
        if instance_at(url) == instance:
            raise StartupError(
                f"WORKER_INSTANCE_ID {instance!r} is in use by the running worker at {url}: "
                "every worker of an APP_ID needs an id of its own"
            )
        if time.monotonic() >= deadline:
            return
        if not waiting:
            waiting = True
            print(
                f"stock-tracker: WORKER_INSTANCE_ID {instance!r} was last at {url}, which "
                "does not answer: waiting for the group to drop that member "
                f"(at most {settings.failure_detection_seconds:g} s, "
                "FAILURE_DETECTION_SECONDS)",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(poll_s)


async def member_url(bootstrap: str, group: str, instance: str) -> str | None:
    """The URL (Faust's assignor metadata) of the member of ``group`` that joined with
    ``instance`` as its group.instance.id, or None.

    The broker names a static member ``<instance id>-<UUID>`` (KIP-345); the
    DescribeGroups versions aiokafka speaks do not carry the instance id itself.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for described in response.to_object()["groups"]:
            for member in described["members"]:
                member_id: str = member["member_id"]
                if (
                    not member_id.startswith(f"{instance}-")
                    or len(member_id) != len(instance) + 37
                ):
                    continue
                metadata = ConsumerProtocolMemberMetadata.decode(member["member_metadata"])
                url = orjson.loads(metadata.user_data).get("url")
                return url if isinstance(url, str) else None
    return None


def instance_at(url: str) -> str | None:
    """The WORKER_INSTANCE_ID a worker at ``url`` answers ``/health`` with (None: no
    answer, or not one of these workers)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=1.0) as r:
            answered: str | None = r.headers.get(INSTANCE_HEADER)
            return answered
    except urllib.error.HTTPError as exc:  # 503 while starting or restoring: still up
        found: str | None = exc.headers.get(INSTANCE_HEADER)
        return found
    except (OSError, ValueError):
        return None


def preflight(settings: Settings) -> None:
    """Every start-up check, cheapest first; raises :class:`StartupError`."""
    check_data_dir(settings.data_dir)
    check_web_port(settings.web_host, settings.web_port)
    wait_for_broker(settings.broker_host_ports, settings.broker_wait_seconds)
    check_instance_id(settings)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
