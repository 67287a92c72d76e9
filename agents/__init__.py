"""The app's agents: thin wiring of topics, tables and the pure rules in ``app.rules``."""

from . import feeds, ingest, tracker

__all__ = ["feeds", "ingest", "tracker"]
