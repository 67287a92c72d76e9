"""scripts/setup installs no browser unless asked (the demo needs none), and when asked
waits for the apt lock instead of failing; scripts/test asks for it in CI only.

apt-get is replaced by a stand-in on PATH that records its arguments, and ``CHROMIUM``
points at a missing file, so the scripts take their install path without installing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import REPO

FAKE_APT = """#!/bin/sh
echo "$@" >> "$APT_LOG"
# The first `update` fails as when another apt run holds the lists lock.
if [ "$1 $2 $3" = "-o DPkg::Lock::Timeout=120 update" ] && [ ! -e "$APT_LOG.busy" ]; then
  touch "$APT_LOG.busy"
  echo "E: Could not get lock /var/lib/apt/lists/lock" >&2
  exit 100
fi
"""


def run(tmp_path: Path, *argv: str, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    apt = bin_dir / "apt-get"
    apt.write_text(FAKE_APT)
    apt.chmod(0o755)
    log = tmp_path / "apt.log"
    log.unlink(missing_ok=True)
    Path(f"{log}.busy").unlink(missing_ok=True)
    full_env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        APT_LOG=str(log),
        CHROMIUM=str(tmp_path / "no-chromium"),
        **env,
    )
    done = subprocess.run(
        [str(REPO / argv[0]), *argv[1:]],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, log.read_text() if log.exists() else ""


def test_setup_installs_no_browser(tmp_path: Path) -> None:
    done, apt = run(tmp_path, "scripts/setup")
    assert done.returncode == 0, done.stdout + done.stderr
    assert apt == ""
    assert "chromium" not in done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the browser is installed only as root")
def test_setup_browser_installs_it_waiting_for_the_apt_lock(tmp_path: Path) -> None:
    done, apt = run(tmp_path, "scripts/setup", "--browser")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = apt.splitlines()
    # The lock was held at first: waited for and tried again, not a failure.
    assert calls == [
        "-o DPkg::Lock::Timeout=120 update -qq",
        "-o DPkg::Lock::Timeout=120 update -qq",
        "-o DPkg::Lock::Timeout=120 install -y -qq chromium",
    ]
    assert "apt lock held?" in done.stderr


def test_setup_refuses_an_unknown_argument(tmp_path: Path) -> None:
    done, apt = run(tmp_path, "scripts/setup", "--chrome")
    assert done.returncode == 2 and "usage: scripts/setup [--browser]" in done.stderr
    assert apt == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="the browser is installed only as root")
@pytest.mark.parametrize(("ci", "installs"), [("true", True), ("", False)])
def test_the_test_command_installs_the_browser_in_ci_only(
    tmp_path: Path, ci: str, installs: bool
) -> None:
    # Only collection, of one small file: the set-up step is what is checked here.
    done, apt = run(
        tmp_path, "scripts/test", "--collect-only", "-q", "tests/unit/test_compose.py", CI=ci
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert ("install -y -qq chromium" in apt) is installs, apt
