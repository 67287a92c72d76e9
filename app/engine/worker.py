"""The worker process: Faust's worker, with checks before it starts and a stop that always
ends within seconds.

Before anything starts, :func:`app.engine.startup.preflight` checks DATA_DIR, WEB_PORT and
BROKER_URL: a failure is one line on stderr and exit code 2.

SIGTERM (or SIGINT) marks the worker as stopping at once (``/health`` answers 503 from
then on) and starts Faust's orderly stop. That stop can wait on a broker that is gone
(leaving the group, flushing producers, Faust's own 60 s service timeouts), so a
deadline is armed too: if the process still runs :data:`STOP_DEADLINE_S` seconds after
the signal, it exits there. That is safe under exactly-once for the same reason a crash
is: nothing of an unfinished batch was committed, and the next start resumes from the
offsets committed with the last batch that was.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import faust

from app.engine import health
from app.engine.startup import StartupError, preflight

log = logging.getLogger(__name__)

STOP_DEADLINE_S = 8.0
"""Longest the worker takes to exit after SIGTERM (the contract allows 10 s)."""


class StockTrackerWorker(faust.Worker):
    """``faust -A app worker`` runs this (the app's ``Worker`` setting)."""

    _deadline: threading.Timer | None = None

    def __init__(self, app: Any, *services: Any, **kwargs: Any) -> None:
        from app.engine.instance import settings

        try:
            preflight(settings)
        except StartupError as exc:
            print(f"stock-tracker: cannot start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        super().__init__(app, *services, **kwargs)

    def _on_sigterm(self) -> None:
        self._stopping("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._stopping("SIGINT")
        super()._on_sigint()

    def _stopping(self, signal_name: str) -> None:
        health.stopping()
        if self._deadline is None:
            log.info("%s: stopping (at most %.0f s)", signal_name, STOP_DEADLINE_S)
            timer = threading.Timer(STOP_DEADLINE_S, _exit_now)
            timer.daemon = True
            timer.start()
            self._deadline = timer


def _exit_now() -> None:
    log.warning(
        "The orderly stop did not end within %.0f s; exiting now (nothing committed is "
        "lost: the next start resumes from the last committed batch)",
        STOP_DEADLINE_S,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
