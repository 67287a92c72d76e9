"""The stream options shared by ``inject`` and ``expect``: parsing them into one
:class:`StreamArgs` and turning that into the events of a scenario or a file.

Bad arguments raise :class:`UsageProblem`; the command prints one line
``<command>: error: ...`` on stderr and exits with code 2 (:func:`fail`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from faust.cli import option

from app.domain.settings import Settings
from app.tools import scenarios as sc

# --- arguments ------------------------------------------------------------------------


class UsageProblem(Exception):
    """A bad command-line argument; the message is the one line the user sees."""


@dataclass(frozen=True, slots=True)
class StreamArgs:
    """Which stream a command works on: a scenario (or file) and its limits."""

    scenario: str | None
    file: Path | None
    seed: int
    count: int | None
    duration: float | None
    live: bool
    start: float | None
    speedup: float | None
    skus: int | None

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        return f"scenario {self.scenario}, seed {self.seed}"


def number(name: str, raw: str | None, *, integer: bool = False, zero: bool = False) -> Any:
    if raw is None:
        return None
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UsageProblem(f"{name} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise UsageProblem(f"{name} must be {'>= 0' if zero else '> 0'}, got {raw!r}")
    return value


def parse_stream_args(
    *,
    scenario: str | None,
    file: str | None,
    seed: str,
    count: str | None,
    duration: str | None,
    time_mode: str,
    start: str | None,
    speedup: str | None,
    skus: str | None,
) -> StreamArgs:
    """Validate the options shared by ``inject`` and ``expect``."""
    if (scenario is None) == (file is None):
        raise UsageProblem("give either --scenario NAME or --file PATH.jsonl")
    if scenario is not None and scenario not in sc.RECIPES:
        raise UsageProblem(f"unknown scenario {scenario!r} (one of: {', '.join(sc.SCENARIOS)})")
    if count is not None and duration is not None:
        raise UsageProblem("give --count or --duration, not both")
    if time_mode not in ("sim", "live"):
        raise UsageProblem(f"--time must be sim or live, got {time_mode!r}")
    try:
        seed_value = int(seed)
    except ValueError:
        raise UsageProblem(f"--seed must be an integer, got {seed!r}") from None
    try:
        start_ts = None if start is None else sc.parse_start(start)
    except sc.ScenarioError as exc:
        raise UsageProblem(str(exc)) from None
    return StreamArgs(
        scenario=scenario,
        file=None if file is None else Path(file),
        seed=seed_value,
        count=number("--count", count, integer=True),
        duration=number("--duration", duration),
        live=time_mode == "live",
        start=start_ts,
        speedup=number("--speedup", speedup),
        skus=number("--skus", skus, integer=True),
    )


def stream_events(args: StreamArgs, conf: Settings) -> tuple[Iterator[sc.Event], int | None]:
    """The events the arguments name, limited by --count / --duration, and how many
    there will be if that is known in advance.

    Without either limit, a scenario stops at its default count and a file at its end.
    In live time ``--duration`` is wall seconds: the first ``duration * speedup``
    seconds of the scenario, produced in real time (speedup 1 by default). A file is
    read (and checked) completely here, before anything is produced.
    """
    count = args.count
    events: Iterable[sc.Event]
    if args.file is not None:
        try:
            lines = sc.read_jsonl(args.file)
        except sc.ScenarioError as exc:
            raise UsageProblem(str(exc)) from None
        events = lines
        total = None if args.duration is not None else min(len(lines), count or len(lines))
    else:
        assert args.scenario is not None
        rules = sc.Rules(conf.reorder_point, conf.reorder_target)
        events = sc.generate(
            args.scenario, args.seed, start=args.start, skus=args.skus, rules=rules
        )
        if count is None and args.duration is None:
            count = sc.RECIPES[args.scenario].default_count
        total = count
    duration = args.duration
    if duration is not None and args.live:
        duration *= args.speedup or 1.0
    return sc.limit(events, count=count, duration=duration), total


def fail(command: str, message: str, code: int = 2) -> NoReturn:
    """One line on stderr and the exit code; never a traceback."""
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


STREAM_OPTIONS = (
    option("--scenario", metavar="NAME", default=None, help=f"One of: {', '.join(sc.SCENARIOS)}."),
    option(
        "--file",
        metavar="PATH",
        default=None,
        help="Replay this JSONL file instead of a scenario.",
    ),
    option(
        "--seed", metavar="N", default="1", show_default=True, help="Random seed of the scenario."
    ),
    option(
        "--count", metavar="N", default=None, help="Number of events (default: the scenario's)."
    ),
    option(
        "--duration",
        metavar="S",
        default=None,
        help="Seconds of event time (sim) or wall time (live) instead of --count.",
    ),
    option(
        "--time",
        "time_mode",
        metavar="sim|live",
        default="sim",
        show_default=True,
        help="sim: ts from --start on; live: ts = wall clock when produced.",
    ),
    option(
        "--start",
        metavar="ISO",
        default=None,
        help=f"Start of sim time, ISO-8601 [{sc.DEFAULT_START}].",
    ),
    option(
        "--speedup",
        metavar="X",
        default=None,
        help="Seconds of event time per wall second (live default 1; sim default: none).",
    ),
    option("--skus", metavar="N", default=None, help="Number of SKUs (default: the scenario's)."),
)
