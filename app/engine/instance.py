"""The one Faust app of the process and its settings.

Read once, at first import: the settings (a bad one is one line on stderr and exit 2)
and the app built from them. Topics (app/engine/topics.py), tables (``tables/``),
agents (``agents/``) and views (``app/serving/``) import ``app`` from here and register
themselves on it; the composition root (app/main.py) imports them all.
"""

from __future__ import annotations

import gc
import sys

from app.domain.settings import Settings, SettingsError
from app.engine.faults import quiet_client_logs
from app.engine.faust_app import StockTrackerApp, build_app
from app.engine.logs import quiet_expected_retries


def load_settings() -> Settings:
    """Settings from the environment, or one line on stderr and exit code 2."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"stock-tracker: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = load_settings()

# Before any client starts: the broker's "not yet" answers at start-up, which aiokafka
# retries by itself, are logged at INFO (app/engine/logs.py).
quiet_expected_retries()

# A worker allocates a few container objects per event and keeps hundreds of thousands
# alive (duplicate memory, windows, staged batches); with the default threshold of 700
# the cyclic collector ran every few hundred events and took about a fifth of the CPU.
# The hot path makes next to no reference cycles, so collect far less often.
gc.set_threshold(100_000, 50, 100)

app: StockTrackerApp = build_app(settings)

quiet_client_logs()
