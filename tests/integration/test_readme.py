"""Every example of the README, run as a user runs it, with its exit code and output checked.

The shell blocks are read from README.md when the test runs, so what runs is what the
README says. Only the ports change: the README's 9092, 6066 and 6070 are taken on a
shared machine, so the test gives the demo free ports (``KAFKA_PORT``,
``KAFKA_CONTROLLER_PORT``, ``WEB_PORT``, which the README names for this) and replaces
``6066``/``6070`` in the blocks with them; ``BROKER_URL`` (the README relies on its
default, the demo's broker) points at the demo's broker the same way.

Covered: the Quickstart's ``scripts/demo`` (and ``scripts/demo stop``/``reset``), both
"Injecting events" blocks against the running demo and a worker of their own, and the
Docker block (no engine here: its services, profiles and inject arguments are checked
against docker-compose.yml and the inject command). ``scripts/test`` is not run from
inside the tests: it is the command that runs them (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.domain.settings import Settings
from tests.integration.harness import REPO, free_port

README = REPO / "README.md"


@dataclass(frozen=True)
class Block:
    heading: str
    text: str

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comments and blanks dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        out = []
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
        return out


def readme_blocks() -> list[Block]:
    blocks, heading = [], ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```sh":
            end = lines.index("```", i + 1)
            blocks.append(Block(heading, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


def blocks_under(heading: str) -> list[Block]:
    return [b for b in readme_blocks() if b.heading == heading]


HANDLED = {
    # scripts/test is not run from a test: it is the command that runs the tests (CI).
    "Quickstart": "test_demo_and_the_inject_examples_as_written",
    "Injecting events": "test_demo_and_the_inject_examples_as_written",
    "Running with Docker": "test_the_docker_examples_fit_the_compose_file",
    "Local Kafka without Docker": "test_the_cluster_example_as_written",
}


def test_every_readme_example_has_a_test() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        assert block.heading in HANDLED, f"a README example without a test: {block}"
    quick = [c for b in blocks_under("Quickstart") for c in b.commands()]
    assert quick == ["scripts/demo", "scripts/test"]
    assert "exec scripts/test" in (REPO / ".ci" / "run").read_text()


# --- the demo, and the examples run against it ----------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: none of the app's settings set, so the README's defaults apply."""
    names = {f.name.upper() for f in fields(Settings)}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("DEMO_")}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.update(extra)
    return env


def run(
    script: str, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``script`` in bash (-e, -u, pipefail) in a session of its own; anything it left
    running in the background is killed afterwards."""
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_gone(pid: int, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
def test_demo_and_the_inject_examples_as_written(tmp_path: Path) -> None:
    kafka_port, web_port, try_port = free_port(), free_port(), free_port()
    demo_dir, kafka_dir = tmp_path / "demo", tmp_path / "kafka"
    demo_env = user_env(
        KAFKA_PORT=str(kafka_port),
        KAFKA_CONTROLLER_PORT=str(free_port()),
        KAFKA_DATA_DIR=str(kafka_dir),
        KAFKA_HEAP="-Xmx384m -Xms128m",
        WEB_PORT=str(web_port),
        DEMO_DIR=str(demo_dir),
        DEMO_COUNT="200",
        DEMO_RATE="100",
        DEMO_SEED="5",
    )
    base = f"http://localhost:{web_port}"
    # The user's own folder, beside the clone's .venv (the README's commands use it).
    home = tmp_path / "user"
    home.mkdir()
    (home / ".venv").symlink_to(REPO / ".venv")
    user = user_env(BROKER_URL=f"kafka://127.0.0.1:{kafka_port}")

    def as_here(block: Block) -> str:
        return block.text.replace("6066", str(web_port)).replace("6070", str(try_port))

    try:
        # Not in a session that is killed afterwards: the demo's worker and broker must
        # outlive the script, as they do for a user.
        out = ok(
            subprocess.run(
                ["scripts/demo"],
                env=demo_env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=400,
                check=False,
            )
        )
        assert f"Open the dashboard:  {base}/" in out
        assert "demo: the story is told" in out
        before = get_json(f"{base}/stats")
        assert before["processed"] > 0

        into_demo, fresh, files = blocks_under("Injecting events")

        # Into the running demo, in live time: processed, and nothing made late.
        out = ok(run(as_here(into_demo), user, home, timeout=300))
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["processed_orders"] > before["processed_orders"]
        inject_line = next(c for c in into_demo.commands() if " inject " in c)
        count = int(shlex.split(inject_line)[shlex.split(inject_line).index("--count") + 1])

        def seen(s: dict[str, int]) -> int:
            return s["processed"] + s["dead_lettered"] + s["duplicates"]

        deadline = time.monotonic() + 120
        after = get_json(f"{base}/stats")
        while seen(after) < seen(before) + count and time.monotonic() < deadline:
            time.sleep(0.5)
            after = get_json(f"{base}/stats")
        assert seen(after) >= seen(before) + count, (before, after)
        assert after["late"] == before["late"], (before, after)

        # A worker of its own on fresh topics; the check matches; then files, replayed.
        try:
            out = ok(run(as_here(fresh) + as_here(files), user, home, timeout=600))
        except subprocess.TimeoutExpired:
            log = home / "try-1.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            raise AssertionError(
                f"the README's own-worker example hung; try-1.log:\n{tail}"
            ) from None

        assert re.search(r"expect: all \d+ checks match at http://localhost:", out), out
        assert "inject: wrote 500 events to sale.jsonl" in out
        assert (home / "sale.jsonl").read_text().count("\n") == 500
        assert (home / "try-1.log").exists()
    finally:
        pid_file = demo_dir / "worker.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        stopped = run("scripts/demo stop", demo_env, REPO, timeout=120)
    ok(stopped)
    assert pid is None or wait_gone(pid), "scripts/demo stop left the worker running"
    status = run("scripts/kafka status", demo_env, REPO, timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    ok(run("scripts/demo reset", demo_env, REPO, timeout=120))
    assert not demo_dir.exists() and not kafka_dir.exists()


# --- Docker: no engine here, so the commands are checked against the compose file ------


def test_the_docker_examples_fit_the_compose_file(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    profiles = {p for svc in services.values() for p in svc.get("profiles", [])}
    (block,) = blocks_under("Running with Docker")
    commands = block.commands()
    assert commands and all(c.startswith("docker compose ") for c in commands)
    for command in commands:
        words = shlex.split(command)[2:]
        if "--profile" in words:
            assert words[words.index("--profile") + 1] in profiles, command
        if "up" in words:
            named = [w for w in words[words.index("up") + 1 :] if not w.startswith("-")]
            assert set(named) <= set(services), command
        if "run" in words:
            service = next(w for w in words[words.index("run") + 1 :] if not w.startswith("-"))
            assert service in services, command
            # The image runs the same command; its arguments must be valid, and a run
            # into the compose worker (live windows) must use live time.
            argv = words[words.index(service) + 1 :]
            assert argv[:3] == ["faust", "-A", "app"], command
            assert argv[3] == "inject" and "--time" in argv and "live" in argv, command
            written = tmp_path / "check.jsonl"
            env = user_env(PYTHONPATH=str(REPO))
            extra = ["--count", "50", "--write", str(written), "--quiet"]
            done = subprocess.run(
                [str(REPO / ".venv" / "bin" / "faust"), *argv[1:], *extra],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert written.read_text().count("\n") == 50


# --- a 3-node cluster without Docker -------------------------------------------------


def free_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (the cluster's clients and controllers)."""
    import socket

    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no block of free ports")


@pytest.mark.integration
def test_the_cluster_example_as_written(tmp_path: Path) -> None:
    """The block, run in the clone as a user runs it (ports moved to free ones, the
    cluster's data under tmp_path): the cluster starts, the worker gets ready on it and
    stays up through the node's SIGKILL and return, and the last line stops it all."""
    [block] = blocks_under("Local Kafka without Docker")
    base, web = free_block(6), free_port()
    text = block.text
    for old, new in (("19092", base), ("19093", base + 1), ("19094", base + 2), ("6071", web)):
        text = text.replace(old, str(new))
    text = text.replace("DATA_DIR=cluster-data", f"DATA_DIR={tmp_path / 'worker-data'}")
    text = text.replace("> cluster.log", f"> {tmp_path / 'cluster.log'}")
    env = user_env(KAFKA_DATA_DIR=str(tmp_path / "kafka"))
    start, worker_line, kill_node, start_node, last = Block(block.heading, text).commands()
    stop = f"KAFKA_NODES=3 KAFKA_PORT={base} scripts/kafka stop"
    assert last == f"kill %1; {stop}"
    worker: subprocess.Popen[bytes] | None = None
    try:
        ok(run(start, env, REPO, timeout=240))
        assert worker_line.endswith("&")
        worker = subprocess.Popen(
            ["bash", "-c", worker_line[:-1]], env=env, cwd=REPO, start_new_session=True
        )
        url = f"http://127.0.0.1:{web}/health"

        def health() -> int:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)
            except OSError:
                return 0

        def wait_ok(timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if health() == 200:
                    return
                time.sleep(0.5)
            log = (tmp_path / "cluster.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"worker not ok within {timeout_s}s:\n{log}")

        wait_ok(120)
        ok(run(kill_node, env, REPO, timeout=60))
        ok(run(start_node, env, REPO, timeout=240))
        wait_ok(120)
        assert worker.poll() is None, "the worker stopped with a node of its cluster"
        os.killpg(worker.pid, signal.SIGTERM)  # the block's `kill %1`
        worker.wait(15)  # the contract: a SIGTERMed worker is gone within 10 s
    finally:
        if worker is not None and worker.poll() is None:
            # A failed check must not leave the worker behind (it would hold its port
            # and the machine's cores through the rest of the run).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(15)
        ok(run(stop, env, REPO, timeout=120))
