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

import asyncio
import math
import os
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from faust.cli import option

from app.domain.events import format_ts
from app.domain.models import INITIAL, Order, SkuState, StockMove, SupplierOrder
from app.domain.rules import merge
from app.domain.rules import windows as w
from app.domain.rules.stock import apply_order, apply_stock
from app.domain.settings import Settings
from app.engine.instance import app, settings
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


def _number(name: str, raw: str | None, *, integer: bool = False, zero: bool = False) -> Any:
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
        count=_number("--count", count, integer=True),
        duration=_number("--duration", duration),
        live=time_mode == "live",
        start=start_ts,
        speedup=_number("--speedup", speedup),
        skus=_number("--skus", skus, integer=True),
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


_STREAM_OPTIONS = (
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

# --- inject ---------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    total: int | None
    duration: float | None
    out: IO[str]
    enabled: bool
    started: float = field(default_factory=time.monotonic)
    drawn: float = 0.0

    def update(self, done: int, event_offset: float, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.drawn < 0.1 and not final):
            return
        self.drawn = now
        if self.total:
            share = done / self.total
        elif self.duration:
            share = min(1.0, event_offset / self.duration)
        else:
            share = 0.0
        bar = "#" * round(share * 30)
        rate = done / max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total else ""
        line = f"\rinject [{bar:<30}] {done:>8}{of} {share:7.1%} {rate:9.0f} ev/s"
        self.out.write(line + ("\n" if final else ""))
        self.out.flush()


@dataclass(slots=True)
class InjectReport:
    """What a run produced (the summary)."""

    per_topic: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    first_error: str | None = None
    barriers: int = 0
    synced: int = 0
    "Barriers that waited for the worker (the others slept --gap)."
    paused: float = 0.0
    elapsed: float = 0.0
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def events(self) -> int:
        return sum(self.per_topic.values())


PACE_MODES = ("auto", "sync", "gap", "none")
"""What a barrier does (see the determinism rule in app/tools/scenarios.py): ``sync`` waits
until the worker's consumer group (APP_ID) has read everything produced so far;
``gap`` sleeps ``--gap`` seconds, enough while the worker keeps up; ``auto`` syncs when
the group has members (a worker runs) and sleeps otherwise; ``none`` sets no barriers
(fastest, but then the results are not deterministic)."""


class Injector:
    """Produces events on a schedule, with a barrier where the determinism rule asks."""

    def __init__(
        self,
        conf: Settings,
        *,
        pacing: sc.Pacing,
        live: bool,
        pace: str,
        gap: float,
        sync_timeout: float,
        progress: Progress,
    ) -> None:
        self.conf = conf
        self.pacing = pacing
        self.live = live
        self.pace = pace
        self.gap = gap
        self.sync_timeout = sync_timeout
        self.progress = progress
        self.report = InjectReport()
        self.pacer = sc.Pacer()
        self.pending: list[asyncio.Future[Any]] = []
        self.produced_end: dict[TopicPartition, int] = {}
        self.producer: Any = None
        self.admin: Any = None

    def topic(self, name: str) -> str:
        return self.conf.topic_prefix + name

    async def run(self, events: Iterable[sc.Event]) -> InjectReport:
        from app.engine.admin import ensure_topics

        bootstrap = self.conf.broker_host_ports
        # Created here with TOPIC_PARTITIONS partitions (not by the broker's auto-create
        # with its default count): keyed by SKU, each orders partition then feeds exactly
        # one partition of the app's SKU-keyed stream, which keeps windows deterministic.
        await ensure_topics(
            bootstrap, [(self.topic(t), {}) for t in sc.INPUT_TOPICS], self.conf.topic_partitions
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,  # no reordering or duplication on retries
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await self.admin.start()
        await self.producer.start()
        await self._wait_for_leaders()
        started = time.monotonic()
        try:
            await self._produce_all(events, started)
            await self._flush()
        finally:
            await self.producer.stop()
            await self.admin.close()
            self.report.elapsed = time.monotonic() - started
        return self.report

    async def _wait_for_leaders(self, timeout: float = 10.0) -> None:
        """Until every input partition has a leader: the first sends to topics created a
        moment ago would otherwise fail and be retried, with a warning each."""
        client = self.producer.client
        deadline = time.monotonic() + timeout
        for name in sc.INPUT_TOPICS:
            topic = self.topic(name)
            while time.monotonic() < deadline:
                await client.force_metadata_update()
                parts = client.cluster.partitions_for_topic(topic) or set()
                leaders = [
                    client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts
                ]
                if parts and all(leader is not None and leader >= 0 for leader in leaders):
                    break
                await asyncio.sleep(0.1)

    async def _produce_all(self, events: Iterable[sc.Event], started: float) -> None:
        origin: float | None = None
        clock = -math.inf
        paced = self.pace != "none"
        for index, event in enumerate(events):
            origin = event.ts if origin is None else origin
            clock = max(clock, event.ts)
            # Barrier pauses shift the schedule instead of causing a catch-up burst.
            wait = started + self.report.paused + self.pacing.due(index, clock - origin)
            delay = wait - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if paced and self.pacer.needs_barrier(event):
                await self._barrier()
            if self.live:
                event = sc.retime(event, time.time(), clock)
            await self._send(event)
            self.progress.update(index + 1, clock - origin)
        self.progress.update(self.report.events, clock - (origin or 0.0), final=True)

    async def _send(self, event: sc.Event) -> None:
        report = self.report
        report.per_topic[event.topic] += 1
        report.first_ts = event.ts if report.first_ts is None else report.first_ts
        report.last_ts = event.ts if report.last_ts is None else max(report.last_ts, event.ts)
        key = None if event.key is None else event.key.encode()
        future = await self.producer.send(
            self.topic(event.topic), sc.encode_value(event.value), key=key
        )
        future.add_done_callback(self._delivered)
        self.pending.append(future)
        if len(self.pending) >= 20_000:
            # Bound memory: wait for the older half, the newer ones keep flowing.
            half = len(self.pending) // 2
            await asyncio.wait(self.pending[:half])
            del self.pending[:half]

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.report.errors += 1
            self.report.first_error = self.report.first_error or repr(exc)
            return
        meta = future.result()
        tp = TopicPartition(meta.topic, meta.partition)
        self.produced_end[tp] = max(self.produced_end.get(tp, 0), meta.offset + 1)

    async def _flush(self) -> None:
        await self.producer.flush()
        if self.pending:
            await asyncio.wait(self.pending)
            self.pending.clear()

    async def _barrier(self) -> None:
        """Flush, then make sure the worker reads what was produced before what follows."""
        began = time.monotonic()
        await self._flush()
        if self.pace == "sync" or (self.pace == "auto" and await self._worker_running()):
            await self._wait_for_worker()
            self.report.synced += 1
        elif self.gap:
            await asyncio.sleep(self.gap)
        self.report.barriers += 1
        self.report.paused += time.monotonic() - began

    async def _worker_running(self) -> bool:
        """Whether the worker's consumer group (APP_ID) has members right now."""
        described = await self.admin.describe_consumer_groups([self.conf.app_id])
        groups = described[0].to_object()["groups"]
        return any(g["error_code"] == 0 and g["members"] for g in groups)

    async def _wait_for_worker(self) -> None:
        """Until the worker's consumer group committed past everything produced.

        The ingest agent commits its input offsets in the transaction that writes the
        regrouped events, so a committed offset means those events are already in
        order in the SKU-keyed stream, ahead of anything produced after this.
        """
        deadline = time.monotonic() + self.sync_timeout
        while True:
            committed = await self.admin.list_consumer_group_offsets(self.conf.app_id)
            behind = [
                tp
                for tp, end in self.produced_end.items()
                if tp not in committed or committed[tp].offset < end
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the worker (consumer group {self.conf.app_id!r}) did not read "
                    f"{len(behind)} input partition(s) within --sync-timeout "
                    f"{self.sync_timeout:g} s"
                )
            await asyncio.sleep(0.02)


def inject_summary(report: InjectReport, args: StreamArgs, conf: Settings) -> str:
    rate = report.events / report.elapsed if report.elapsed > 0 else 0.0
    lines = [
        f"inject: {args.describe()}: {report.events} events in {report.elapsed:.2f} s "
        f"({rate:.0f} events/s)",
    ]
    for topic in sc.INPUT_TOPICS:
        lines.append(f"  {topic:<12}{report.per_topic[topic]:>10}  -> {conf.topic_prefix}{topic}")
    if report.first_ts is not None and report.last_ts is not None:
        mode = "live" if args.live else "sim"
        lines.append(
            f"  event time  {format_ts(report.first_ts)} .. {format_ts(report.last_ts)} ({mode})"
        )
    lines.append(
        f"  barriers    {report.barriers:>10}  ({report.synced} waited for the worker, "
        f"{report.paused:.2f} s paused)"
    )
    errors = f"  errors      {report.errors:>10}"
    if report.first_error:
        errors += f"  first: {report.first_error}"
    lines.append(errors)
    return "\n".join(lines)


@app.command(
    *_STREAM_OPTIONS,
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
        args = parse_stream_args(**stream)  # the _STREAM_OPTIONS
        if validate:
            if args.file is None:
                raise UsageProblem("--validate checks a file: give --file PATH.jsonl")
            validate_file(args.file, quiet)
        rate_value = _number("--rate", rate)
        if pace not in PACE_MODES:
            raise UsageProblem(f"--pace must be one of {', '.join(PACE_MODES)}, got {pace!r}")
        gap_value = _number("--gap", gap, zero=True)
        sync_value = _number("--sync-timeout", sync_timeout)
        events, total = stream_events(args, settings)
    except UsageProblem as exc:
        fail("inject", str(exc))
    if write is not None:
        await _write(Path(write), events, quiet)
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


def validate_file(path: Path, quiet: bool) -> NoReturn:
    """``inject --file F --validate``: one line per bad line on stdout, then a summary;
    exit 0 if every line is valid, 1 if any is not (2 if the file cannot be read)."""
    total = bad = 0
    try:
        for number, problem in sc.check_jsonl(path):
            total += 1
            if problem is not None:
                bad += 1
                print(f"{path}:{number}: {problem}", flush=True)
    except sc.ScenarioError as exc:
        fail("inject", str(exc))
    if not quiet:
        verdict = "all valid" if not bad else f"{bad} bad"
        print(f"inject: validated {total} lines of {path}: {verdict}; nothing produced")
    raise SystemExit(1 if bad else 0)


async def broker_unreachable(conf: Settings, timeout: float = 5.0) -> str | None:
    """None when a bootstrap server of BROKER_URL accepts a connection, else the one
    line to print. Checked before any Kafka client starts: a client would log its own
    connection errors first, and name neither the setting nor what to do."""

    async def attempt(hostport: str) -> str | None:
        host, _, port = hostport.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except TimeoutError:
            return f"{hostport}: no answer within {timeout:g} s"
        except ConnectionError as exc:
            return f"{hostport}: {os.strerror(exc.errno) if exc.errno else exc}"
        except (OSError, ValueError) as exc:
            return f"{hostport}: {getattr(exc, 'strerror', None) or exc}"
        writer.close()
        return None

    failures = await asyncio.gather(*(attempt(h) for h in conf.broker_host_ports.split(",")))
    if any(f is None for f in failures):
        return None
    return (
        f"cannot reach Kafka at BROKER_URL={conf.broker_url} ({'; '.join(map(str, failures))}); "
        "start a broker (scripts/demo or scripts/kafka start) or set BROKER_URL"
    )


async def _write(path: Path, events: Iterable[sc.Event], quiet: bool) -> None:
    try:
        with path.open("wb") as out:
            n = sc.write_jsonl(events, out)
    except OSError as exc:
        fail("inject", f"cannot write {path}: {exc.strerror or exc}")
    if not quiet:
        print(f"inject: wrote {n} events to {path}", flush=True)


# --- expect: the expected results ---------------------------------------------------


def sku_partition(sku: str, partitions: int) -> int:
    """Partition of ``sku`` in the app's SKU-keyed stream (as agents/ingest.py)."""
    hashed: int = murmur2(sku.encode())
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class SkuResult:
    """What one SKU must end up with."""

    state: SkuState = INITIAL
    orders: int = 0
    stock_moves: int = 0
    backordered_orders: int = 0
    backordered_units: int = 0
    supplier_orders: dict[str, SupplierOrder] = field(default_factory=dict)
    "Latest state of each supplier order, in the order they were opened."


@dataclass(slots=True)
class Expected:
    """The results a worker must reach after reading the stream on fresh topics."""

    conf: Settings
    windows_known: bool
    "False in live time: the ts are only known when produced."
    events: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    duplicates: int = 0
    processed_orders: int = 0
    processed_stock_moves: int = 0
    late: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    skus: dict[str, SkuResult] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    "order_id -> the fields of its order-status record that are checked."
    closed: list[w.ClosedWindow] = field(default_factory=list)
    closed_by_sku: dict[tuple[str, str], list[w.ClosedWindow]] = field(default_factory=dict)
    "(sku, kind) -> its closed windows, in closing order."
    expedites: list[dict[str, Any]] = field(default_factory=list)
    partitions: dict[int, w.PartitionWindows] = field(default_factory=dict)
    seen: dict[tuple[str, str, str], float] = field(default_factory=dict)
    stream_time: dict[int, float] = field(default_factory=dict)

    def sku(self, sku: str) -> SkuResult:
        result = self.skus.get(sku)
        if result is None:
            result = self.skus[sku] = SkuResult()
        return result

    def windows_of(self, partition: int) -> w.PartitionWindows:
        pw = self.partitions.get(partition)
        if pw is None:
            specs = (
                w.tumbling(self.conf.tumbling_seconds),
                w.hopping(self.conf.hopping_seconds, self.conf.hopping_step_seconds),
            )
            pw = w.PartitionWindows(
                specs, self.conf.window_grace_seconds, self.conf.expedite_threshold
            )
            self.partitions[partition] = pw
        return pw


def compute_expected(events: Iterable[sc.Event], conf: Settings, *, live: bool) -> Expected:
    """Apply the stream with the app's rules, in the contract's merge order.

    The events are taken as produced by ``inject``: keyed by SKU, so each lands in the
    input partition Kafka's default partitioner picks for its key, in production order
    there; the valid ones are then applied sorted by merge key (app/domain/rules/merge.py).
    The duplicate memory is modelled per partition with the app's 24-hour horizon;
    where the app forgets ids at the end of a batch, this forgets them on lookup, so
    the two agree except for a duplicate arriving within one batch of the horizon.
    """
    exp = Expected(conf, windows_known=not live)
    valid: list[tuple[tuple[int, int], float, tuple[str, Order | StockMove]]] = []
    for event in events:
        exp.events += 1
        exp.per_topic[event.topic] += 1
        parsed = sc.parse_event(event)
        if parsed is None:
            exp.dead_lettered += 1
            continue
        code = merge.ORDERS if event.topic == "orders" else merge.STOCK
        partition = sku_partition(event.key, conf.topic_partitions) if event.key else 0
        valid.append(((code, partition), parsed.ts, (event.topic, parsed)))
    for n, (topic, parsed) in enumerate(merge.contract_order(valid), start=1):
        exp.first_ts = parsed.ts if exp.first_ts is None else exp.first_ts
        exp.last_ts = parsed.ts if exp.last_ts is None else max(exp.last_ts, parsed.ts)
        if not _is_new(exp, topic, parsed):
            exp.duplicates += 1
            continue
        if isinstance(parsed, Order):
            _expect_order(exp, parsed)
        else:
            _expect_move(exp, parsed)
        if n % 5000 == 0:
            _close_windows(exp)
    _close_windows(exp)
    return exp


def _is_new(exp: Expected, topic: str, parsed: Order | StockMove) -> bool:
    ident = parsed.order_id if isinstance(parsed, Order) else parsed.event_id
    sku, ts = parsed.sku, parsed.ts
    partition = sku_partition(sku, exp.conf.topic_partitions)
    before = exp.stream_time.get(partition, -math.inf)
    exp.stream_time[partition] = max(before, ts)
    key = (topic, sku, ident)
    seen = exp.seen.get(key)
    if seen is not None and seen >= before - exp.conf.dedupe_seconds:
        return False
    exp.seen[key] = ts
    return True


def _expect_order(exp: Expected, order: Order) -> None:
    conf = exp.conf
    result = exp.sku(order.sku)
    state, status, changes = apply_order(
        result.state,
        order,
        reorder_point=conf.reorder_point,
        reorder_target=conf.reorder_target,
    )
    result.state = state
    result.orders += 1
    exp.processed_orders += 1
    if status.status == "backordered":
        result.backordered_orders += 1
        result.backordered_units += status.backordered_units
    exp.statuses[order.order_id] = {
        "sku": order.sku,
        "quantity": order.quantity,
        "status": status.status,
        "backordered_units": status.backordered_units,
        "level_after": status.level_after,
    }
    for so in changes:
        result.supplier_orders[so.supplier_order_id] = so
    if not exp.windows_known:
        return
    pw = exp.windows_of(sku_partition(order.sku, conf.topic_partitions))
    outcome = pw.apply_order(order.sku, order.ts, order.quantity, order.unit_price)
    if outcome.late:
        exp.late += 1
    open_so = state.open_order.supplier_order_id if state.open_order else None
    for ex in outcome.expedites:
        exp.expedites.append(
            {
                "sku": ex.sku,
                "window_start": format_ts(ex.window_start),
                "window_end": format_ts(ex.window_end),
                "orders": ex.orders,
                "supplier_order_id": open_so,
            }
        )


def _expect_move(exp: Expected, move: StockMove) -> None:
    result = exp.sku(move.sku)
    state, changes = apply_stock(
        result.state,
        move,
        reorder_point=exp.conf.reorder_point,
        reorder_target=exp.conf.reorder_target,
    )
    result.state = state
    result.stock_moves += 1
    exp.processed_stock_moves += 1
    for so in changes:
        result.supplier_orders[so.supplier_order_id] = so


def _close_windows(exp: Expected) -> None:
    for pw in exp.partitions.values():
        for closed in pw.close_due():
            exp.closed.append(closed)
            exp.closed_by_sku.setdefault((closed.sku, closed.kind), []).append(closed)


def held_windows(exp: Expected, sku: str, kind: w.WindowKind) -> list[list[Any]]:
    """The windows ``GET /windows/{sku}?kind=`` must list: open ones, and closed ones
    still within CLOSED_WINDOW_RETENTION_SECONDS of the partition's stream time."""
    pw = exp.windows_of(sku_partition(sku, exp.conf.topic_partitions))
    spec = pw.spec(kind)
    assert spec is not None
    rows = [
        (start, end, agg, False)
        for start, end, agg in pw.windows_for(sku, kind)  # open (not yet closed)
    ]
    stream_time = pw.stream_time
    keep_after = -math.inf if stream_time is None else stream_time
    for c in exp.closed_by_sku.get((sku, kind), []):
        if c.window_end + exp.conf.closed_window_retention_seconds > keep_after:
            rows.append((c.window_start, c.window_end, c.agg, True))
    rows.sort(key=lambda r: r[0])
    return [
        [format_ts(s), format_ts(e), a.orders, a.units, w.revenue_out(a.revenue), closed]
        for s, e, a, closed in rows
    ]


_SO_FIELDS = ("supplier_order_id", "quantity", "delivered", "status")


def _so_row(so: SupplierOrder) -> list[Any]:
    return [so.supplier_order_id, so.quantity, so.delivered, so.status]


def expected_json(exp: Expected) -> dict[str, Any]:
    """Everything ``expect --json`` prints."""
    backordered = sum(r.backordered_orders for r in exp.skus.values())
    units = sum(r.backordered_units for r in exp.skus.values())
    doc: dict[str, Any] = {
        "events": exp.events,
        "topics": dict(exp.per_topic),
        "first_ts": None if exp.first_ts is None else format_ts(exp.first_ts),
        "last_ts": None if exp.last_ts is None else format_ts(exp.last_ts),
        "stats": _expected_stats(exp),
        "backordered": {"orders": backordered, "units": units},
        "skus": {
            sku: {
                "level": r.state.level,
                "orders": r.orders,
                "stock_moves": r.stock_moves,
                "backordered_orders": r.backordered_orders,
                "backordered_units": r.backordered_units,
                "open_supplier_order": (
                    None if r.state.open_order is None else r.state.open_order.supplier_order_id
                ),
                "supplier_orders": [
                    dict(zip(_SO_FIELDS, _so_row(so), strict=True))
                    for so in r.supplier_orders.values()
                ],
            }
            for sku, r in sorted(exp.skus.items())
        },
    }
    if exp.windows_known:
        doc["window_results"] = [
            {
                "sku": c.sku,
                "kind": c.kind,
                "window_start": format_ts(c.window_start),
                "window_end": format_ts(c.window_end),
                "orders": c.agg.orders,
                "units": c.agg.units,
                "revenue": w.revenue_out(c.agg.revenue),
            }
            for c in exp.closed
        ]
        doc["expedites"] = exp.expedites
    return doc


def _expected_stats(exp: Expected) -> dict[str, int]:
    stats = {
        "processed_orders": exp.processed_orders,
        "processed_stock_moves": exp.processed_stock_moves,
        "dead_lettered": exp.dead_lettered,
        "duplicates": exp.duplicates,
    }
    if exp.windows_known:
        stats["late"] = exp.late
        stats["expedites"] = len(exp.expedites)
    return stats


def expected_summary(exp: Expected, args: StreamArgs, limit: int = 15) -> str:
    """The readable summary ``expect`` prints."""
    sos = [so for r in exp.skus.values() for so in r.supplier_orders.values()]
    status_count = Counter(so.status for so in sos)
    backordered = sum(r.backordered_orders for r in exp.skus.values())
    units = sum(r.backordered_units for r in exp.skus.values())
    span = ""
    if exp.first_ts is not None and exp.last_ts is not None:
        mode = "live: real times differ" if args.live else "sim"
        span = f", event time {format_ts(exp.first_ts)} .. {format_ts(exp.last_ts)} ({mode})"
    lines = [
        f"expect: {args.describe()}: {exp.events} events{span}",
        f"  input         orders {exp.per_topic['orders']}, stock {exp.per_topic['stock']}",
        f"  processed     orders {exp.processed_orders}, stock moves {exp.processed_stock_moves}",
        f"  dead letters  {exp.dead_lettered}",
        f"  duplicates    {exp.duplicates}",
        f"  SKUs          {len(exp.skus)}, total level "
        f"{sum(r.state.level for r in exp.skus.values())}, "
        f"{sum(r.state.level < 0 for r in exp.skus.values())} in backlog",
        f"  backordered   {backordered} orders, {units} units",
        f"  supplier ord. {len(sos)} opened: "
        + ", ".join(f"{n} {s}" for s, n in sorted(status_count.items())),
    ]
    if exp.windows_known:
        kinds = Counter(c.kind for c in exp.closed)
        lines += [
            f"  windows       closed: {kinds['tumbling']} tumbling, {kinds['hopping']} hopping; "
            f"late orders {exp.late}",
            f"  expedites     {len(exp.expedites)}",
        ]
    else:
        lines.append("  windows       not predicted in live time")
    lines.append("")
    lines.append(f"  {'sku':<12}{'level':>8}{'orders':>8}{'backord.':>10}  supplier orders")
    # The most eventful SKUs first: backlog and supplier orders are the story.
    ranked = sorted(
        exp.skus.items(),
        key=lambda kv: (-len(kv[1].supplier_orders), -kv[1].backordered_orders, kv[0]),
    )
    for sku, r in ranked[:limit]:
        so_text = ", ".join(
            f"{so.supplier_order_id} {so.delivered}/{so.quantity} {so.status}"
            for so in r.supplier_orders.values()
        )
        lines.append(
            f"  {sku:<12}{r.state.level:>8}{r.orders:>8}{r.backordered_orders:>10}  "
            f"{so_text or '-'}"
        )
    if len(ranked) > limit:
        lines.append(f"  ... {len(ranked) - limit} more SKUs (--json lists all)")
    return "\n".join(lines)


# --- expect --check: compare with the worker over HTTP ---------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One expected value, read with ``extract`` from the JSON answer of ``path``."""

    name: str
    path: str
    extract: Callable[[Any], Any]
    expected: Any


@dataclass(frozen=True, slots=True)
class Mismatch:
    name: str
    expected: Any
    actual: Any


_NO_ANSWER = object()


def build_checks(exp: Expected, max_orders: int = 400) -> list[Check]:
    """Every check of ``--check``: stats, per SKU stock, supplier orders and windows,
    and the status of up to ``max_orders`` orders spread over the stream."""
    checks = [
        Check(f"stats {name}", "/stats", _field(name), value)
        for name, value in _expected_stats(exp).items()
    ]
    for sku, r in sorted(exp.skus.items()):
        q = urllib.parse.quote(sku, safe="")
        checks.append(Check(f"stock {sku} level", f"/stock/{q}", _field("level"), r.state.level))
        so = r.state.open_order
        checks.append(
            Check(
                f"stock {sku} open supplier order",
                f"/stock/{q}",
                _open_so,
                None if so is None else _so_row(so),
            )
        )
        newest_first = [_so_row(so) for so in reversed(r.supplier_orders.values())]
        checks.append(
            Check(f"supplier orders {sku}", f"/supplier-orders/{q}", _so_list, newest_first)
        )
        if exp.windows_known:
            for kind in w.KINDS:
                checks.append(
                    Check(
                        f"windows {sku} {kind}",
                        f"/windows/{q}?kind={kind}",
                        _window_rows,
                        held_windows(exp, sku, kind),
                    )
                )
    order_ids = list(exp.statuses)
    step = max(1, math.ceil(len(order_ids) / max_orders))
    for order_id in order_ids[::step]:
        doc = exp.statuses[order_id]
        want = [doc["status"], doc["backordered_units"], doc["level_after"]]
        checks.append(
            Check(
                f"order {order_id}",
                f"/orders/{urllib.parse.quote(order_id, safe='')}",
                _order_fields,
                want,
            )
        )
    return checks


def _field(name: str) -> Callable[[Any], Any]:
    return lambda body: body.get(name, _NO_ANSWER) if isinstance(body, dict) else _NO_ANSWER


def _open_so(body: Any) -> Any:
    so = body.get("open_supplier_order")
    return None if so is None else [so[name] for name in _SO_FIELDS]


def _so_list(body: Any) -> Any:
    items = body["supplier_orders"] if isinstance(body, dict) else body
    return [[d[name] for name in _SO_FIELDS] for d in items]


def _window_rows(body: Any) -> Any:
    return [
        [d["window_start"], d["window_end"], d["orders"], d["units"], d["revenue"], d["closed"]]
        for d in body["windows"]
    ]


def _order_fields(body: Any) -> Any:
    return [body["status"], body["backordered_units"], body["level_after"]]


async def _get_all(
    session: aiohttp.ClientSession, base: str, paths: Iterable[str]
) -> dict[str, tuple[int, Any]]:
    limit = asyncio.Semaphore(16)

    async def get(path: str) -> tuple[str, tuple[int, Any]]:
        async with limit:
            try:
                async with session.get(base + path) as response:
                    body = await response.read()
                    try:
                        return path, (response.status, orjson.loads(body))
                    except orjson.JSONDecodeError:
                        return path, (response.status, body.decode(errors="replace")[:80])
            except (aiohttp.ClientError, TimeoutError) as exc:
                return path, (0, f"{NO_ANSWER}: {type(exc).__name__}")

    return dict(await asyncio.gather(*(get(p) for p in dict.fromkeys(paths))))


NO_ANSWER = "no answer"
"""How a check reads when nothing answered at the --check URL."""


def _evaluate(checks: list[Check], answers: dict[str, tuple[int, Any]]) -> list[Mismatch]:
    out = []
    for check in checks:
        status, body = answers[check.path]
        if status != 200:
            actual: Any = f"HTTP {status}: {body}" if status else body
        else:
            try:
                actual = check.extract(body)
            except (KeyError, TypeError, AttributeError) as exc:
                actual = f"unexpected answer ({type(exc).__name__}: {exc})"
        if actual is _NO_ANSWER:
            actual = "missing in answer"
        if actual != check.expected:
            out.append(Mismatch(check.name, check.expected, actual))
    return out


async def run_checks(base: str, checks: list[Check], timeout: float) -> list[Mismatch]:
    """Poll until every check matches or ``timeout`` passes; return what still differs.

    The cheap ``/stats`` checks are polled first: once the worker has processed as many
    events as expected, every other answer is read, again every second until all match.
    """
    deadline = time.monotonic() + timeout
    base = base.rstrip("/")
    stats = [c for c in checks if c.path == "/stats"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            if not _evaluate(stats, await _get_all(session, base, ["/stats"])):
                break
            await asyncio.sleep(0.25)
        while True:
            mismatches = _evaluate(checks, await _get_all(session, base, (c.path for c in checks)))
            if not mismatches or time.monotonic() >= deadline:
                return mismatches
            await asyncio.sleep(1.0)


def _short(value: Any, width: int = 48) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_difference(expected: Any, actual: Any) -> tuple[Any, Any]:
    """For two lists, the first item that differs (with its index); else the values."""
    if isinstance(expected, list) and isinstance(actual, list):
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            if e != a:
                return f"[{i}] {_short(e, 40)}", f"[{i}] {_short(a, 40)}"
        return f"{len(expected)} items", f"{len(actual)} items"
    return expected, actual


def mismatch_table(mismatches: list[Mismatch], limit: int = 40) -> str:
    rows = [("check", "expected", "actual")]
    for m in mismatches[:limit]:
        expected, actual = _first_difference(m.expected, m.actual)
        rows.append((m.name, _short(expected), _short(actual)))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    if len(mismatches) > limit:
        lines.append(f"  ... {len(mismatches) - limit} more")
    return "\n".join(lines)


@app.command(
    *_STREAM_OPTIONS,
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
        args = parse_stream_args(**stream)  # the _STREAM_OPTIONS
        timeout_s = _number("--timeout", timeout)
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
