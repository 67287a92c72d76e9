"""Start-up checks of ``faust -A app worker``: the causes a worker cannot run with.

Before Faust starts anything (and before it would fail deep inside with a traceback),
the worker checks that DATA_DIR is a writable folder, that WEB_PORT can be bound, and
that BROKER_URL accepts a connection within BROKER_WAIT_SECONDS. A failure is one line
on stderr naming the cause and the setting, and exit code 2, like a bad setting
(app/engine/worker.py). Only the ``worker`` command runs them: other commands (``inject``,
``expect``, ...) need neither the port nor the data folder.
"""

from __future__ import annotations

import errno
import socket
import tempfile
import time
from pathlib import Path

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


def preflight(settings: Settings) -> None:
    """Every start-up check, cheapest first; raises :class:`StartupError`."""
    check_data_dir(settings.data_dir)
    check_web_port(settings.web_host, settings.web_port)
    wait_for_broker(settings.broker_host_ports, settings.broker_wait_seconds)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
