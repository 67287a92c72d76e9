"""The app's agents: thin wiring of topics, tables and the pure rules in ``app.rules``."""

# The app first: building it registers every module in a fixed order (app/main.py), so
# importing this package on its own (a test, a script) meets no half-built module.
import app.main  # noqa: F401, I001
from . import feeds, ingest, tracker

__all__ = ["feeds", "ingest", "tracker"]
