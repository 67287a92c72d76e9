"""The stock tracker, a Faust application: ``faust -A app worker`` loads ``app.app``."""

from app.main import app

__all__ = ["app"]
