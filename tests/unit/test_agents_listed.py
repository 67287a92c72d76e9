"""``faust -A app agents`` lists every agent, batch agents included, with topics and help.

A reader who knows Faust looks there first for where orders are consumed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("join_read", "reader"), [("direct", "@direct"), ("repartition", "@ingest")]
)
def test_faust_agents_lists_the_batch_agents(tmp_path: Path, join_read: str, reader: str) -> None:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "APP_ID": "stock-tracker",
        "JOIN_READ": join_read,
    }
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "agents"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        cells[0]: cells[1:]
        for line in done.stdout.splitlines()
        if line.startswith("| @")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows[reader][0] == "orders, stock"
    assert ({"@direct", "@ingest"} - {reader}).isdisjoint(rows)
    assert rows["@tracker"][0] == "stock-tracker-events-by-sku"
    assert rows["@dead-letter-stats"][0] == "dead-letters"
    assert "order-status" in rows["@tracker"][1]
    assert "dead-letters" in rows[reader][1]
