"""Text the worker repeats from a client's request in its answers: how much of it.

A request may carry a path or a parameter of many kilobytes; repeating it whole in an
error answer (and from there in a dashboard or a log) helps nobody.
"""

from __future__ import annotations

ECHO_CHARS = 80
"""Most characters of a client's input an error message repeats (a path, a parameter)."""


def cut(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` for an error message: at most ``limit`` of its characters, and when it
    was longer, a mark that says how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}\u2026 ({len(text)} characters)"
