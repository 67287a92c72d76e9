"""Whether the worker can make progress: the one place ``/health`` reads it from.

The engine modules report here what they see (app/engine/transaction.py: commits failing and
succeeding; app/engine/admin.py's probe: the cluster unreachable, partitions without a leader;
app/engine/worker.py: the worker stopping), and :func:`degraded` turns it into the reason
``/health`` gives with its 503, or None when nothing stands in the way. Pure state, no
Faust and no Kafka, so the rules can be tested on their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Health:
    """What the engine modules reported last."""

    stopping: bool = False
    broker_error: str | None = None
    """Why the last probe of the cluster failed (None: it answered)."""
    leaderless: tuple[str, ...] = ()
    """``topic[partition]`` of the app's partitions that had no leader at the last probe."""
    failing_commits: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Producer (transactional id) -> (monotonic time of the first failure, last error)."""

    def degraded(self) -> str | None:
        """Why the worker cannot make progress now, or None."""
        if self.stopping:
            return "stopping"
        if self.broker_error is not None:
            return f"broker unreachable: {self.broker_error}"
        if self.leaderless:
            shown = ", ".join(self.leaderless[:5])
            more = f" and {len(self.leaderless) - 5} more" if len(self.leaderless) > 5 else ""
            return f"partitions without a leader: {shown}{more}"
        if self.failing_commits:
            since, error = min(self.failing_commits.values())
            n = len(self.failing_commits)
            return (
                f"commits failing for {time.monotonic() - since:.0f} s "
                f"({n} producer{'s' if n > 1 else ''}), last error: {error}"
            )
        return None


state = Health()


def commit_failed(key: str, error: str) -> None:
    since = state.failing_commits.get(key, (time.monotonic(), ""))[0]
    state.failing_commits[key] = (since, error)


def commit_ended(key: str) -> None:
    """The producer's batch committed, or was given up (its partition left this worker)."""
    state.failing_commits.pop(key, None)


def probed(broker_error: str | None, leaderless: tuple[str, ...] = ()) -> None:
    state.broker_error = broker_error
    state.leaderless = leaderless


def stopping() -> None:
    state.stopping = True


def degraded() -> str | None:
    return state.degraded()
