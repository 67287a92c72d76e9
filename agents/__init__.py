"""The app's agents: thin wiring of topics, tables and the pure rules in ``app.domain.rules``.

``ingest`` and ``tracker`` are batch agents (app/engine/batch_agents.py): each gets one
fetch of its topic at a time, as raw records; ``feeds`` holds Faust agents proper.
"""

from . import feeds, ingest, tracker

__all__ = ["feeds", "ingest", "tracker"]
