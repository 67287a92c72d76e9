"""A memory probe for bench/memory.py, loaded into the worker through PYTHONPATH.

When ``$MEMPROBE_DIR/request`` appears, a daemon thread writes ``$MEMPROBE_DIR/counts.json``:
the live Python objects per type (objgraph-style, from ``gc.get_objects()``), the sizes
of the worker's known per-key structures, and the shared RocksDB cache's usage; then it
deletes the request. Benchmark tooling only: the app does not import it.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path


def _snapshot() -> dict[str, object]:
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    out: dict[str, object] = {"types": dict(counts.most_common(40)), "sizes": {}}
    sizes: dict[str, int] = {}
    base = sys.modules.get("app.engine.stores")
    shared = getattr(base, "_shared_memory", None)
    if shared is not None:
        sizes["rocksdb_cache_usage"] = shared.cache.get_usage()
        sizes["rocksdb_cache_pinned"] = shared.cache.get_pinned_usage()
        sizes["rocksdb_memtables"] = shared.write_buffers.get_usage()
    tables = sys.modules.get("tables")
    for name in ("seen_ids", "order_status", "sku_state", "windows", "supplier_orders"):
        table = getattr(tables, name, None)
        store = getattr(table, "_data", None)
        index = getattr(store, "_key_index", None)
        if index is not None:
            sizes[f"{name}._key_index"] = len(index)
    runtime = sys.modules.get("agents.partition_runtime")
    for rt in getattr(runtime, "runtimes", {}).values():
        p = rt.partition
        sizes[f"tracker[{p}].merge"] = len(rt.merge)
        sizes[f"tracker[{p}].watermarks"] = len(rt.watermarks)
        pw = rt.loaded_windows  # None until the partition's first order after a rebuild
        if pw is not None:
            sizes[f"tracker[{p}].open_windows"] = len(pw._accs)
            sizes[f"tracker[{p}].window_heap"] = len(pw._heap)
            sizes[f"tracker[{p}].expedited"] = len(pw._expedited)
    waiters = sys.modules.get("agents.waiters")
    orders = getattr(waiters, "orders", None)
    if orders is not None:
        sizes["waiters.orders"] = len(getattr(orders, "_by_key", {}))
    props = collections.Counter[str]()
    for name in ("seen_ids", "order_status", "sku_state", "windows", "supplier_orders"):
        store = getattr(getattr(tables, name, None), "_data", None)
        for db in (getattr(store, "_dbs", None) or {}).values():
            for prop in ("estimate-table-readers-mem", "cur-size-all-mem-tables"):
                value = db.property_int_value(f"rocksdb.{prop}")
                props[prop] += value or 0
    sizes.update({f"rocksdb.{k}": v for k, v in props.items()})
    sizes["python_allocated_blocks"] = sys.getallocatedblocks()
    out["sizes"] = sizes
    if os.environ.get("MEMPROBE_TRIM"):
        # How much of the RSS is memory the allocator holds but nobody uses: give it
        # back (glibc) and let the bench read RSS again.
        out["rss_kb_before_trim"] = _rss_kb()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        out["rss_kb_after_trim"] = _rss_kb()
    return out


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _watch(directory: Path) -> None:
    request = directory / "request"
    while True:
        if request.exists():
            try:
                data = _snapshot()
            except Exception as exc:  # a probe must never take the worker down
                data = {"error": repr(exc)}
            (directory / "counts.json").write_text(json.dumps(data, indent=1))
            request.unlink(missing_ok=True)
        time.sleep(0.5)


if os.environ.get("MEMPROBE_DIR"):
    threading.Thread(
        target=_watch, args=(Path(os.environ["MEMPROBE_DIR"]),), daemon=True, name="memprobe"
    ).start()
