"""A normal start, some work and a normal stop log no WARNING and no ERROR line: a new
user reads those as "broken". Retries the broker asks for while a group or a topic comes
up (``GroupCoordinatorNotAvailable``, "Marking the coordinator dead", ...) are expected
and logged at INFO (app/engine/logs.py)."""

from __future__ import annotations

import re

import pytest

from tests.integration.harness import Worker, produce

pytestmark = pytest.mark.integration

LEVEL = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|\b(WARNING|ERROR|CRITICAL):|Traceback")
NEEDED = [
    # mode's timers: a periodic task ran longer than its interval. On this shared
    # 2-core machine that is a real symptom of load, not noise, and it stays a WARNING.
    re.compile(r"\[WARNING\] Timer \S+ is overlapping"),
]
"""WARNING lines a normal run may still print because they are genuinely needed."""


def loud_lines(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if LEVEL.search(line) and not any(p.search(line) for p in NEEDED)
    ]


def test_a_normal_start_and_stop_log_no_warning_or_error(worker: Worker, kafka: str) -> None:
    sku = "SKU-LOG-1"
    produce(
        kafka,
        worker.topic("stock"),
        [
            {
                "event_id": f"e{i}",
                "sku": sku,
                "reason": "delivery",
                "quantity": 5,
                "ts": 1795694400 + i,
            }
            for i in range(20)
        ],
        key=sku,
    )
    worker.wait_for(f"/stock/{sku}", lambda b: b["level"] == 100)
    worker.stop()
    # A restart is a normal start too: its tables are rebuilt from the changelogs.
    worker.start()
    worker.wait_for(f"/stock/{sku}", lambda b: b["level"] == 100)
    worker.stop()
    logs = worker.logs()
    assert len(logs) == 2
    for log in logs:
        text = log.read_text(errors="replace")
        assert "[^StockTrackerWorker]: Starting..." in text, log
        assert "Closing event loop" in text, log
        assert loud_lines(text) == [], f"{log}:\n" + "\n".join(loud_lines(text))
