"""The app's agents: thin wiring of topics, tables and the pure rules in ``app.domain.rules``.

``direct`` reads the input for the tracker (the default join); ``ingest`` and
``tracker`` are batch agents (app/engine/batch_agents.py): each gets one
fetch of its topic at a time, as raw records; ``feeds`` holds Faust agents proper.
"""

from . import direct, feeds, ingest, tracker

__all__ = ["direct", "feeds", "ingest", "tracker"]
