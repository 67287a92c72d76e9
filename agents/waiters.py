"""Read your own writes: HTTP requests waiting for a key to be committed, and their wake-up.

``GET /orders/{order_id}?wait=S`` registers here before it looks the order up; the
tracker calls :meth:`Waiters.notify` with the keys a batch wrote once that batch's
transaction has committed (and its table writes are in the local store), so a waiting
request answers the moment its order is processed, with no polling loop. The number of
waiting requests is bounded (MAX_WAITING_REQUESTS): past it, :class:`TooManyWaiting`.

Pure asyncio; no Faust, no Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from app.engine.instance import settings


class TooManyWaiting(Exception):
    """The worker already holds its limit of waiting requests."""


class Waiters:
    """Futures per key, resolved when a commit writes the key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_key: dict[bytes, list[asyncio.Future[None]]] = {}
        self._count = 0

    def __len__(self) -> int:
        """How many requests are waiting now."""
        return self._count

    @contextmanager
    def waiting(self, key: bytes) -> Iterator[asyncio.Future[None]]:
        """Within: a future that is done once a commit wrote ``key``.

        Raises :class:`TooManyWaiting` when ``limit`` requests already wait. Register
        *before* looking the key up: a commit between the look-up and the registration
        would otherwise go unnoticed (in one event loop, with no await in between, the
        order does not matter, but the rule keeps it right if one is added).
        """
        if self._count >= self.limit:
            raise TooManyWaiting(
                f"too many requests are waiting on this worker (MAX_WAITING_REQUESTS="
                f"{self.limit}); retry shortly, or ask without wait"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_key.setdefault(key, []).append(future)
        self._count += 1
        try:
            yield future
        finally:
            self._count -= 1
            found = self._by_key.get(key)
            if found is not None:
                found.remove(future)
                if not found:
                    del self._by_key[key]

    def notify(self, keys: Iterable[bytes]) -> None:
        """Wake every request waiting for one of ``keys`` (call after the commit)."""
        if not self._by_key:
            return
        for key in keys:
            for future in self._by_key.get(key, ()):
                if not future.done():
                    future.set_result(None)


orders = Waiters(settings.max_waiting_requests)
"""Requests waiting for an ``order-status`` record (keyed by order_id)."""
