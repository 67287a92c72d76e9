"""A failed integration test prints the last lines of each worker log it produced and
keeps the logs (tests/integration/conftest.py), checked on an inner pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO

INNER_CONFTEST = """
from tests.integration.conftest import pytest_runtest_makereport, pytest_runtest_setup
"""

INNER_TESTS = """
from tests.integration.harness import STARTED, Worker


def fake_worker(path, name):
    # A worker that "ran": its log exists, as after Worker.start().
    w = Worker("127.0.0.1:1", path / name)
    w.workdir.mkdir(parents=True)
    lines = [f"{name} line {i}" for i in range(100)]
    (w.workdir / "worker-1.log").write_text("\\n".join(lines) + "\\n")
    (w.workdir / "worker-2.log").write_text(f"{name} restarted\\n")
    STARTED.append(w)
    return w


def test_fails(tmp_path):
    fake_worker(tmp_path, "alpha")
    fake_worker(tmp_path, "beta")
    assert False, "the worker did something wrong"


def test_passes(tmp_path):
    fake_worker(tmp_path, "gamma")
"""


def test_a_failed_test_prints_and_keeps_every_worker_log(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    artifacts = tmp_path / "artifacts"
    env = dict(os.environ, PYTHONPATH=str(REPO), TEST_ARTIFACTS=str(artifacts))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 1 passed" in out
    # The last 40 lines of every log of both workers of the failed test, and no more.
    for name in ("alpha", "beta"):
        assert f"{name} line 99" in out and f"{name} line 60" in out
        assert f"{name} line 59" not in out
        assert f"{name} restarted" in out
    assert "last 40 lines of" in out
    assert "gamma" not in out  # the passing test's worker is not shown
    kept = sorted(p.name for p in artifacts.glob("failed/*/*.log"))
    assert len(kept) == 4 and all("worker-" in k for k in kept), kept
    folders = [p.name for p in (artifacts / "failed").iterdir()]
    assert folders == ["test_inner.py_test_fails"]
