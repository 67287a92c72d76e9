"""Custom commands of the app: ``inject`` (scripted input) and ``expect`` (what it must do).

``faust -A app inject`` produces a scenario of :mod:`app.tools.scenarios` (or replays a JSONL
file) to the ``orders`` and ``stock`` topics with a plain aiokafka producer, paced so
that the results are deterministic (see the determinism rule in app/tools/scenarios.py).
``faust -A app expect`` computes, from the same stream, what a worker that read it on
fresh topics must end up with, and with ``--check URL`` polls the worker's HTTP API
until it does (exit 0) or a timeout passes (exit 1, with a table of mismatches).

This module owns the command-line surface, the producer loop and the expected-results
model; the arithmetic is the app's own (:mod:`app.domain.rules.stock`,
:mod:`app.domain.rules.windows`, :mod:`app.domain.events`), so ``expect`` is a tool for demos and
smoke checks, not an independent test oracle. Bad arguments print one line
``<command>: error: ...`` on stderr and exit with code 2.

Measured (one local broker, one worker, 4 partitions; 2026-11-26): an hour of
``steady`` trade in sim time, as fast as possible (``--duration 3600``: 37,328 events,
23 barriers) plays in 15.2 s with the default ``--pace auto`` against a running worker
(12.9 s of it waiting for the worker at barriers; the worker has processed all of it
1.5 s later and ``expect --check`` then matches all 1,405 checks); in 9.0 s with
``--pace gap`` (23 x 0.3 s); and in 1.7 s (about 22,000 events/s) with ``--pace none``,
which is not deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from faust.cli import option

from app.engine.instance import app, settings
from app.tools import scenarios as sc
from app.tools.check import NO_ANSWER, build_checks, mismatch_table, run_checks
from app.tools.expect import compute_expected, expected_json, expected_summary
from app.tools.inject import (
    PACE_MODES,
    Injector,
    Progress,
    broker_unreachable,
    inject_summary,
    validate_file,
    write_file,
)
from app.tools.streams import (
    STREAM_OPTIONS,
    UsageProblem,
    fail,
    number,
    parse_stream_args,
    stream_events,
)


@app.command(
    *STREAM_OPTIONS,
    option(
        "--rate",
        metavar="EV_PER_S",
        default=None,
        help="At most this many events per wall second.",
    ),
    option(
        "--pace",
        metavar="MODE",
        default="auto",
        show_default=True,
        help="Barriers (app/tools/scenarios.py): auto, sync (wait for the worker), gap, none.",
    ),
    option(
        "--gap", metavar="S", default="0.3", show_default=True, help="Pause (s) of a gap barrier."
    ),
    option(
        "--sync-timeout",
        metavar="S",
        default="120",
        show_default=True,
        help="Longest wait (s) for the worker at a sync barrier.",
    ),
    option(
        "--write",
        metavar="PATH",
        default=None,
        help="Write the events to this JSONL file, produce none.",
    ),
    option("--quiet", is_flag=True, default=False, help="No progress bar, no summary."),
    option(
        "--validate",
        is_flag=True,
        default=False,
        help="With --file: check every line against the input schemas (GET /schemas), "
        "report each bad one with its reason, produce nothing; exit 1 if any is bad.",
    ),
)
async def inject(
    self: Any,
    rate: str | None,
    pace: str,
    gap: str,
    sync_timeout: str,
    write: str | None,
    quiet: bool,
    validate: bool,
    **stream: Any,
) -> None:
    """Produce a scripted scenario (or replay a JSONL file) to the orders and stock topics."""
    try:
        args = parse_stream_args(**stream)  # the STREAM_OPTIONS
        if validate:
            if args.file is None:
                raise UsageProblem("--validate checks a file: give --file PATH.jsonl")
            validate_file(args.file, quiet)
        rate_value = number("--rate", rate)
        if pace not in PACE_MODES:
            raise UsageProblem(f"--pace must be one of {', '.join(PACE_MODES)}, got {pace!r}")
        gap_value = number("--gap", gap, zero=True)
        sync_value = number("--sync-timeout", sync_timeout)
        events, total = stream_events(args, settings)
    except UsageProblem as exc:
        fail("inject", str(exc))
    if write is not None:
        await write_file(Path(write), events, quiet)
        return
    speed = args.speedup if args.speedup is not None else (1.0 if args.live else None)
    # The progress bar follows event time: in live time --duration is wall seconds.
    span = args.duration
    if span is not None and args.live:
        span *= speed or 1.0
    injector = Injector(
        settings,
        pacing=sc.Pacing(speed, rate_value),
        live=args.live,
        pace=pace,
        gap=gap_value,
        sync_timeout=sync_value,
        progress=Progress(
            total,
            span,
            sys.stderr,
            not quiet and sys.stderr.isatty(),
        ),
    )
    unreachable = await broker_unreachable(settings)
    if unreachable is not None:
        fail("inject", unreachable)
    try:
        report = await injector.run(events)
    except (TimeoutError, OSError) as exc:
        fail("inject", str(exc) or repr(exc), code=1)
    except Exception as exc:  # Kafka unreachable and the like: one line, not a traceback
        text = str(exc)
        name = type(exc).__name__
        text = text if text.startswith(name) else f"{name}: {text}"
        fail("inject", f"{text} (BROKER_URL={settings.broker_url})", code=1)
    if not quiet:
        print(inject_summary(report, args, settings), flush=True)
    if report.errors:
        raise SystemExit(1)


@app.command(
    *STREAM_OPTIONS,
    option("--json", "as_json", is_flag=True, default=False, help="Print JSON, not a summary."),
    option(
        "--check",
        metavar="URL",
        default=None,
        help="Compare with the worker at this URL (http://host:port).",
    ),
    option(
        "--timeout", metavar="S", default="60", show_default=True, help="Longest --check wait (s)."
    ),
)
async def expect(
    self: Any,
    as_json: bool,
    check: str | None,
    timeout: str,
    **stream: Any,
) -> None:
    """Print what a worker must end up with after reading a scenario; --check compares."""
    try:
        args = parse_stream_args(**stream)  # the STREAM_OPTIONS
        timeout_s = number("--timeout", timeout)
        if check is not None and not check.startswith(("http://", "https://")):
            raise UsageProblem(f"--check must be an http:// URL, got {check!r}")
        events, _ = stream_events(args, settings)
        exp = compute_expected(events, settings, live=args.live)
    except UsageProblem as exc:
        fail("expect", str(exc))
    doc = expected_json(exp) if as_json else None
    if not as_json:
        print(expected_summary(exp, args), flush=True)
    if check is None:
        if doc is not None:
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode(), flush=True)
        return
    checks = build_checks(exp)
    mismatches = await run_checks(check, checks, timeout_s)
    if (
        mismatches
        and all(isinstance(m.actual, str) and m.actual.startswith(NO_ANSWER) for m in mismatches)
        and len(mismatches) == len(checks)
    ):
        fail(
            "expect",
            f"no worker answers at --check {check} (within --timeout {timeout_s:g} s); "
            "start one (scripts/demo) or give its URL (http://host:WEB_PORT)",
        )
    if doc is not None:
        doc["check"] = {
            "url": check,
            "checks": len(checks),
            "mismatches": [
                {"check": m.name, "expected": m.expected, "actual": m.actual} for m in mismatches
            ],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode(), flush=True)
    elif mismatches:
        print(f"\nexpect: {len(mismatches)} of {len(checks)} checks differ at {check}:")
        print(mismatch_table(mismatches), flush=True)
    else:
        print(f"\nexpect: all {len(checks)} checks match at {check}", flush=True)
    if mismatches:
        raise SystemExit(1)
