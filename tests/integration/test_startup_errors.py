"""Start-up failures: one line on stderr naming the cause and the setting, exit code 2.

Each case runs the real ``faust -A app worker`` with one bad setting and nothing else
wrong; none needs a broker (the broker check is the last one, and the unreachable-broker
case points at a port nothing listens on).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Worker, free_port

pytestmark = pytest.mark.integration


def run_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    worker = Worker(f"127.0.0.1:{free_port()}", tmp_path / "w", env_extra=env)
    full = worker.env()
    full.setdefault("BROKER_WAIT_SECONDS", "3")
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
        env={**full, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    line = lines[0]
    assert line.startswith("stock-tracker: cannot start: "), line
    for word in words:
        assert word in line, line
    return line


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    line = assert_one_line(run_worker(tmp_path, DATA_DIR=str(a_file)), "DATA_DIR", str(a_file))
    assert "is a file" in line


def test_data_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    target = a_file / "sub"
    line = assert_one_line(run_worker(tmp_path, DATA_DIR=str(target)), "DATA_DIR", str(target))
    assert "cannot be created" in line


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    # root writes anywhere chmod allows; sysfs refuses new files even to root.
    sysfs = Path("/sys")
    try:
        with tempfile.TemporaryFile(dir=sysfs):
            pass
    except PermissionError:
        yield sysfs
    except OSError:
        pytest.skip("no folder this (root) process cannot write in")
    else:
        pytest.skip("no folder this (root) process cannot write in")


def test_data_dir_not_writable(tmp_path: Path, unwritable_dir: Path) -> None:
    line = assert_one_line(
        run_worker(tmp_path, DATA_DIR=str(unwritable_dir)), "DATA_DIR", str(unwritable_dir)
    )
    assert "not writable" in line


def test_web_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line(run_worker(tmp_path, WEB_PORT=str(port)), "WEB_PORT", str(port))
    assert "already in use" in line


def test_broker_unreachable_after_the_bounded_wait(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = run_worker(tmp_path, BROKER_URL=f"kafka://127.0.0.1:{port}", BROKER_WAIT_SECONDS="2")
    line = assert_one_line(done, "BROKER_URL", f"127.0.0.1:{port}", "within 2 s")
    assert "unreachable" in line
