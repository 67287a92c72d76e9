"""Scripted injection end to end: ``faust -A app inject`` into a real worker, then
``faust -A app expect --check`` against its HTTP API, both run as the user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.harness import REPO, Worker, faust_cli, read_topic

pytestmark = pytest.mark.integration

DEMO = ["--scenario", "demo", "--seed", "11", "--count", "2000"]


cli = faust_cli


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def window_key(doc: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(doc[k] for k in ("sku", "kind", "window_start", "window_end"))


def test_demo_injection_reaches_the_expected_results(worker: Worker, kafka: str) -> None:
    env = worker.env()
    out = ok(cli(env, "inject", *DEMO))
    assert "2000 events" in out and "errors               0" in out

    checked = ok(cli(env, "expect", *DEMO, "--check", worker.url, "--timeout", "90"))
    assert "checks match" in checked.splitlines()[-1], checked

    # Beyond what HTTP shows: every closed window was emitted once, with the
    # expected totals, and the expedites and dead letters are the expected ones.
    expected = orjson.loads(ok(cli(env, "expect", *DEMO, "--json")))
    results = read_topic(
        kafka, worker.topic("window-results"), min_count=len(expected["window_results"])
    )
    got = {window_key(v): v for _, v in results}
    assert len(got) == len(results)  # never emitted twice
    assert got == {window_key(d): d for d in expected["window_results"]}
    expedites = read_topic(kafka, worker.topic("expedites"), min_count=len(expected["expedites"]))
    fields = ("sku", "window_start", "window_end", "orders", "supplier_order_id")
    assert sorted(tuple(v[f] for f in fields) for _, v in expedites) == sorted(
        tuple(e[f] for f in fields) for e in expected["expedites"]
    )
    dead = read_topic(kafka, worker.topic("dead-letters"), idle_s=1.0)
    assert len(dead) == expected["stats"]["dead_lettered"] >= 10


def test_write_then_replay_gives_the_same_results(worker: Worker, tmp_path: Path) -> None:
    env = worker.env()
    scenario = ["--scenario", "restock", "--seed", "3", "--count", "1500"]
    path = tmp_path / "restock.jsonl"
    assert "wrote 1500 events" in ok(cli(env, "inject", *scenario, "--write", str(path)))
    again = tmp_path / "again.jsonl"
    ok(cli(env, "inject", *scenario, "--write", str(again), "--quiet"))
    assert path.read_bytes() == again.read_bytes()

    ok(cli(env, "inject", "--file", str(path), "--pace", "sync", "--quiet"))
    # The replay reaches what the scenario itself is expected to reach...
    ok(cli(env, "expect", *scenario, "--check", worker.url, "--timeout", "90"))
    # ...and what the file is expected to reach, computed from the file.
    ok(cli(env, "expect", "--file", str(path), "--check", worker.url, "--timeout", "30"))


def test_live_time_with_a_duration(worker: Worker) -> None:
    env = worker.env()
    # 5 s of wall time at 60x: the first 5 minutes of the malformed scenario, in real
    # time, stamped with the wall clock. Levels and counts are predictable, windows not.
    live = ["--scenario", "malformed", "--time", "live", "--speedup", "60", "--duration", "5"]
    # Produced in real time, the worker keeps up: the plain gap barrier is enough.
    out = ok(cli(env, "inject", *live, "--pace", "gap"))
    assert "(live)" in out
    checked = ok(cli(env, "expect", *live, "--check", worker.url, "--timeout", "60"))
    assert "windows       not predicted in live time" in checked
    assert "checks match" in checked.splitlines()[-1]


def test_a_mismatch_is_reported_with_exit_code_1(worker: Worker) -> None:
    env = worker.env()
    ok(cli(env, "inject", "--scenario", "restock", "--count", "100", "--quiet"))
    wrong = cli(
        env,
        "expect",
        *("--scenario", "restock", "--count", "120", "--check", worker.url, "--timeout", "3"),
    )
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "checks differ" in wrong.stdout and "stats processed_orders" in wrong.stdout


BOTH = ("inject", "expect")
BAD_ARGUMENTS = [
    (BOTH, ["--scenario", "nope"], "unknown scenario 'nope'"),
    (("inject",), ["--scenario", "demo", "--rate", "-5"], "--rate must be > 0"),
    (BOTH, ["--scenario", "demo", "--count", "5", "--duration", "3"], "not both"),
    (BOTH, ["--file", "/nonexistent/e.jsonl"], "cannot read /nonexistent/e.jsonl"),
    (BOTH, ["--file", "BAD_FILE"], "bad.jsonl:2: not valid JSON"),
    (BOTH, ["--scenario", "demo", "--start", "yesterday"], "--start: not an ISO-8601"),
    (BOTH, ["--scenario", "demo", "--count", "many"], "--count must be an integer"),
    (("inject",), ["--scenario", "demo", "--pace", "warp"], "--pace must be one of"),
    (("expect",), ["--scenario", "demo", "--check", "localhost:1"], "http:// URL"),
    (BOTH, [], "give either --scenario NAME or --file PATH.jsonl"),
    # Nothing listens on port 1: the broker and the worker are named, with what to do.
    (
        ("inject",),
        ["--scenario", "demo", "--count", "5"],
        "cannot reach Kafka at BROKER_URL=kafka://127.0.0.1:1 (127.0.0.1:1: Connection refused)",
    ),
    (
        ("expect",),
        ["--scenario", "demo", "--count", "5", "--check", "http://127.0.0.1:1", "--timeout", "1"],
        "no worker answers at --check http://127.0.0.1:1",
    ),
]


def test_bad_arguments_give_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"topic": "orders", "value": "x"}\n{"topic": "orders", nope}\n')
    # No broker needed: arguments are checked before anything connects, and the broker
    # and worker named are unreachable on purpose.
    env = Worker("127.0.0.1:1", tmp_path).env()
    runs = []
    for commands, args, message in BAD_ARGUMENTS:
        argv = [str(bad) if a == "BAD_FILE" else a for a in args]
        for command in commands:
            # All at once: each process spends a second or two importing Faust.
            proc = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", "app", command, *argv],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            runs.append((command, argv, message, proc))
    for command, argv, message, proc in runs:
        stdout, stderr = proc.communicate(timeout=60)
        what = f"{command} {' '.join(argv)}:\n{stdout}{stderr}"
        assert proc.returncode == 2, what
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, what
        assert lines[0].startswith(f"{command}: error: ") and message in lines[0], what
        assert "Traceback" not in stdout + stderr, what
