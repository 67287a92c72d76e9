"""Test harness for the real thing: a Kafka broker, worker processes, producers, readers.

Nothing here is mocked: the broker is Apache Kafka started by ``scripts/kafka``, the
worker is ``faust -A app worker`` in a subprocess, and results are read back from
Kafka (read_committed) and over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[2]

STARTED: list[Worker] = []
"""Every worker started in this test process, in order (tests/integration/conftest.py
prints the last lines of their logs when a test fails)."""


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range, never handed out
    before in this process.

    A port the kernel picks (bind to 0) is an ephemeral one: any outgoing connection
    may take it before the broker or worker it is meant for binds it, and a worker
    restarted on its own port finds it taken (seen: "port already in use").
    """
    low, high = 20_000, _ephemeral_low() - 100
    rng = random.SystemRandom()
    for _ in range(1_000):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{high}")


@contextmanager
def throwaway_broker(data_dir: Path | None = None) -> Iterator[str]:
    """A single-node Kafka on free ports (scripts/kafka), stopped and removed on exit."""
    port = free_port()
    own_dir = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="kafka-")) if data_dir is None else data_dir
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        KAFKA_DATA_DIR=str(directory),
    )
    script = str(REPO / "scripts" / "kafka")
    subprocess.run([script, "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], env=env, check=False)
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Cluster:
    """A throwaway Kafka of ``nodes`` brokers (scripts/kafka) whose nodes a test can
    kill and start again; node numbers are 1-based, as Kafka's node ids."""

    nodes: int
    directory: Path
    ports: list[int]
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_of(self, port: int) -> int:
        return self.ports.index(port) + 1

    def _script(self, *args: str) -> None:
        subprocess.run([str(REPO / "scripts" / "kafka"), *args], env=self.env, check=True)

    def kill(self, node: int) -> None:
        """SIGKILL one broker: no controlled shutdown, exactly like a crash."""
        if self.nodes > 1:
            self._script("kill-node", str(node))
            return
        pid_file = self.directory / "kafka.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def start(self, node: int) -> None:
        """Start a node again (same ports, same data) and wait until it answers."""
        if self.nodes > 1:
            self._script("start-node", str(node))
        else:
            self._script("start")

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts" / "kafka"), "stop"], env=self.env, check=False)


@contextmanager
def throwaway_cluster(n: int = 3) -> Iterator[Cluster]:
    """``n`` Kafka brokers on free ports (scripts/kafka; n=1 is the single-node path),
    stopped and removed on exit. With 3 nodes or more, internal topics have 3 replicas
    and ``min.insync.replicas`` 2."""
    directory = Path(tempfile.mkdtemp(prefix=f"kafka{n}-"))
    ports = [free_port() for _ in range(n)]
    controllers = [free_port() for _ in range(n)]
    env = dict(os.environ, KAFKA_DATA_DIR=str(directory), KAFKA_NODES=str(n))
    if n == 1:
        env.update(KAFKA_PORT=str(ports[0]), KAFKA_CONTROLLER_PORT=str(controllers[0]))
    else:
        env.update(
            KAFKA_PORTS=",".join(map(str, ports)),
            KAFKA_CONTROLLER_PORTS=",".join(map(str, controllers)),
            KAFKA_START_TIMEOUT="120",
        )
    cluster = Cluster(n, directory, ports, env)
    subprocess.run([str(REPO / "scripts" / "kafka"), "start"], env=env, check=True)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass
class Worker:
    """One ``faust -A app worker`` process with its own app id, topics and port."""

    bootstrap: str
    workdir: Path
    env_extra: Mapping[str, str] = field(default_factory=dict)
    app_id: str = field(default_factory=lambda: unique("t"))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def prefix(self) -> str:
        return f"{self.app_id}."

    def topic(self, name: str) -> str:
        """The real name of a contract topic for this worker."""
        return self.prefix + name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "BROKER_URL": ";".join(f"kafka://{b}" for b in self.bootstrap.split(",")),
                "APP_ID": self.app_id,
                "TOPIC_PREFIX": self.prefix,
                "WEB_PORT": str(self.port),
                "WEB_HOST": "127.0.0.1",
                "DATA_DIR": str(self.workdir / "data"),
                "TOPIC_PARTITIONS": "4",
                # Explicit, so nothing of the test process's own environment leaks in
                # (the agent tests build their app with memory://).
                "STORE_URL": "rocksdb://",
                "PYTHONPATH": str(REPO),
            }
        )
        env.update(self.env_extra)
        return env

    def start(self, wait: bool = True, timeout_s: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        if not any(w is self for w in STARTED):
            STARTED.append(self)
        self.log_path = self.workdir / f"worker-{self.starts}.log"
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 90.0, poll_s: float = 0.3) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            status, _ = self.get("/health")
            if status == 200:
                return
            time.sleep(poll_s)
        raise AssertionError(f"worker not ready after {timeout_s}s:\n{self.tail()}")

    def logs(self) -> list[Path]:
        """Every log this worker wrote (one per start), oldest first."""
        return sorted(self.workdir.glob("worker-*.log"), key=lambda p: int(p.stem[7:]))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``: (status, parsed JSON body); status 0 when nothing answers."""
        status, body, _ = self.request(path)
        return status, body

    def request(self, path: str) -> tuple[int, Any, Mapping[str, str]]:
        """GET ``path``: (status, parsed JSON body, headers); status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body), dict(e.headers)
            except ValueError:
                return e.code, body.decode(errors="replace"), dict(e.headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, None, {}

    def wait_for(
        self, path: str, predicate: Any, timeout_s: float = 60.0, poll_s: float = 0.2
    ) -> Any:
        """Poll ``path`` every ``poll_s`` until ``predicate(body)`` holds; return the body."""
        deadline = time.monotonic() + timeout_s
        body: Any = None
        while time.monotonic() < deadline:
            status, body = self.get(path)
            if status == 200 and predicate(body):
                return body
            time.sleep(poll_s)
        raise AssertionError(f"timed out waiting on {path}; last answer: {body}\n{self.tail()}")


def faust_cli(
    env: Mapping[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``python -m faust -A app <args>`` with ``env`` (e.g. ``Worker.env()``), output as text."""
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | Mapping[str, Any]],
    key: Any = None,
) -> int:
    """Write values to ``topic`` with a plain aiokafka producer; ``key`` may be a callable."""

    def keyed(v: bytes | Mapping[str, Any]) -> tuple[str, int | None, Any, Any]:
        k = key(v) if callable(key) else key
        return topic, None, k.encode() if isinstance(k, str) else k, v

    return _send_all(bootstrap, (keyed(v) for v in values))


def _send_all(
    bootstrap: str, messages: Iterable[tuple[str, int | None, bytes | None, Any]]
) -> int:
    """Write (topic, partition or None, key, value) messages in order; a value that is not
    bytes is sent as JSON. Returns how many."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        n = 0
        try:
            sent = []
            for topic, partition, key, v in messages:
                raw = v if isinstance(v, bytes) else orjson.dumps(v)
                sent.append(await producer.send(topic, raw, key=key, partition=partition))
                n += 1
                if len(sent) >= 5000:
                    await asyncio.gather(*sent)
                    sent.clear()
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        return n

    return asyncio.run(run())


def read_topic(
    bootstrap: str, topic: str, *, idle_s: float = 3.0, min_count: int = 0, timeout_s: float = 90.0
) -> list[tuple[bytes | None, Any]]:
    """Every committed message of ``topic`` (read_committed), as (key, parsed value).

    Reads until ``min_count`` messages arrived and then nothing new for ``idle_s``.
    """

    async def run() -> list[tuple[bytes | None, Any]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        out: list[tuple[bytes | None, Any]] = []
        try:
            deadline = time.monotonic() + timeout_s
            parts = None
            while parts is None and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(topic)
                if parts is None:
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.2)
            if not parts:
                return out
            consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
            last = time.monotonic()
            while time.monotonic() < deadline:
                got = await consumer.getmany(timeout_ms=200)
                if got:
                    last = time.monotonic()
                    for records in got.values():
                        out.extend((r.key, orjson.loads(r.value)) for r in records)
                elif len(out) >= min_count and time.monotonic() - last > idle_s:
                    break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create topics with ``partitions`` partitions (before any worker or producer does)."""

    async def run() -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        finally:
            await admin.close()

    asyncio.run(run())


def produce_to(
    bootstrap: str, messages: Iterable[tuple[str, int, bytes | Mapping[str, Any]]]
) -> int:
    """Write (topic, partition, value) messages, each to the partition given, in order."""
    return _send_all(bootstrap, ((t, p, None, v) for t, p, v in messages))


def on_a_broker(bootstrap: str | None, run: Any) -> None:
    """``run(bootstrap)`` on the broker given, or on a throwaway one (for the benches)."""
    if bootstrap:
        run(bootstrap)
        return
    with throwaway_broker() as started:
        run(started)


@contextmanager
def running_worker(bootstrap: str, **env: str) -> Iterator[Worker]:
    """A started worker in a folder of its own, stopped and removed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(bootstrap, Path(tmp), env_extra=env)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()


def cpu_seconds(worker: Worker) -> float:
    """CPU time (user + system) the worker process used so far (Linux; 0 elsewhere)."""
    try:
        assert worker.proc is not None
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AssertionError, IndexError, ValueError):
        return 0.0
