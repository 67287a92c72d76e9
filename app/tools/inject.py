"""The injector: produces a scripted stream to ``orders`` and ``stock`` with a plain
aiokafka producer, paced so that the results are deterministic (see the determinism
rule in app/tools/scenarios.py), and reports what it sent.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from app.domain.events import format_ts
from app.domain.settings import Settings
from app.tools import scenarios as sc
from app.tools.streams import StreamArgs, fail

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

        The ingest agent (``JOIN_READ=repartition``) commits its input offsets in the
        transaction that writes the regrouped events, so a committed offset means those
        events are already in order in the SKU-keyed stream, ahead of anything produced
        after this. The direct join commits, with a tracker partition's transaction,
        how far the worker's reader had read when its events went into the join
        (agents/direct.py), so they are ahead of anything produced after this too.
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


async def write_file(path: Path, events: Iterable[sc.Event], quiet: bool) -> None:
    try:
        with path.open("wb") as out:
            n = sc.write_jsonl(events, out)
    except OSError as exc:
        fail("inject", f"cannot write {path}: {exc.strerror or exc}")
    if not quiet:
        print(f"inject: wrote {n} events to {path}", flush=True)
