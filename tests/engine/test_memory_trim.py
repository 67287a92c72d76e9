"""The worker gives freed heap back to the system (app/engine/memory.py)."""

from __future__ import annotations

import asyncio
import platform
import re
from pathlib import Path

import pytest

from app.engine import memory


def rss_kb() -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found.group(1))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_leaves_the_resident_set() -> None:
    # Many small blocks with a few survivors spread among them: glibc keeps the pages
    # the dead ones held (a survivor above them pins the heap top) until asked.
    blocks = [bytearray(2000) for _ in range(100_000)]
    survivors = blocks[::500]
    del blocks
    before = rss_kb()
    assert asyncio.run(memory.trim_freed_memory()) is True
    assert rss_kb() < before - 50_000  # most of the 200 MB freed went back
    assert survivors
