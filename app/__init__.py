"""The stock tracker, a Faust application: ``faust -A app worker`` loads ``app.app``.

Layers, each importing only the ones below it (docs/architecture.md; checked by
import-linter in CI): ``app.main`` (composition root) > ``app.tools`` (inject, expect)
> ``app.serving`` (HTTP) > ``agents`` > ``tables`` > ``app.engine`` (everything that
adapts Faust and aiokafka) > ``app.domain`` (events, rules, settings: no Faust, no I/O).

The Faust app is built on first access to ``app.app`` (PEP 562), so the domain modules
import without reading settings or declaring topics.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import app

        return app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
