"""The stock tracker, a Faust application: ``faust -A app worker`` loads ``app.app``.

The Faust app is built on first access to ``app.app`` (PEP 562), so the pure modules of
this package (``app.events``, ``app.models``, ``app.rules``) import without reading
settings or declaring topics.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import app

        return app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
