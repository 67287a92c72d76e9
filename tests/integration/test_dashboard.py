"""The dashboard in a real browser, ``/metrics`` in the Prometheus text format, and the
static file route, against a real worker and broker.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``) driven by Playwright for
Python; Playwright never downloads a browser here (``CHROMIUM`` names another binary).
Without it the browser tests skip with the reason, except in CI (``CI`` set), where they
fail instead: ``scripts/test`` installs it there (``scripts/setup --browser``).
Screenshots go to ``artifacts/`` (git-ignored); with ``UPDATE_DOCS_SCREENSHOT=1`` the demo
screenshot is also copied to docs/dashboard.png.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from tests.integration.harness import REPO, Worker, faust_cli, produce, unique

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
ARTIFACTS = REPO / "artifacts"
WAIT_MS = 60_000
"""How long the page may take to show what the worker processed (polls every 1.5 s)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if in_ci():
            pytest.fail(f"{CHROMIUM} is missing in CI: `scripts/setup --browser` installs it")
        pytest.skip(
            f"no browser at {CHROMIUM}: `scripts/setup --browser` installs Debian's chromium "
            "(CI=true scripts/test does it itself)"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def produce_now(*args: Any, **kwargs: Any) -> int:
    """``produce`` from a thread: while a test module's browser is open, Playwright's sync
    API keeps an event loop running in this thread, and ``asyncio.run`` refuses to nest."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(produce, *args, **kwargs).result()


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stock_event(sku: str, quantity: int, reason: str = "delivery") -> dict[str, Any]:
    return {
        "event_id": unique("ev"),
        "sku": sku,
        "reason": reason,
        "quantity": quantity,
        "supplier_id": "SUP-1",
        "ts": iso_now(),
    }


def order_event(sku: str, quantity: int) -> dict[str, Any]:
    return {
        "order_id": unique("o"),
        "customer_id": "C-1",
        "sku": sku,
        "quantity": quantity,
        "unit_price": 9.99,
        "ts": iso_now(),
    }


def raw_get(worker: Worker, path: str) -> tuple[int, str, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation): status, type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


# --- the dashboard in a browser ---------------------------------------------------------


def test_dashboard_renders_and_updates_live(worker: Worker, kafka: str, page: Page) -> None:
    page.goto(worker.url + "/")
    expect(page).to_have_title("Stock tracker")
    for table in ("stock-table", "supplier-orders-table", "window-results-table"):
        expect(page.get_by_test_id(table)).to_be_visible()
    expect(page.get_by_test_id("window-chart").locator("svg")).to_be_visible()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("stat-processed")).to_have_text("0")
    expect(page.get_by_test_id("empty-expedites")).to_have_text("No expedites yet")
    expect(page.get_by_test_id("empty-stock")).to_be_visible()
    expect(page.get_by_test_id("legend-reorder-point")).to_have_text("20")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloaded

    ok, short = unique("SKU-OK"), unique("SKU-SHORT")
    level_ok, level_short = (
        page.get_by_test_id(f"level-{ok}"),
        page.get_by_test_id(f"level-{short}"),
    )
    produce_now(kafka, worker.topic("stock"), [stock_event(ok, 50), stock_event(short, 5)])
    expect(level_ok).to_have_text("50", timeout=WAIT_MS)
    expect(level_short).to_have_text("5", timeout=WAIT_MS)
    expect(page.get_by_test_id(f"row-{short}")).to_have_attribute("data-state", "low")

    produce_now(kafka, worker.topic("orders"), [order_event(ok, 8), order_event(short, 9)])
    expect(level_ok).to_have_text("42", timeout=WAIT_MS)
    expect(level_short).to_have_text("-4", timeout=WAIT_MS)
    expect(page.get_by_test_id(f"row-{ok}")).to_have_attribute("data-state", "ok")
    expect(page.get_by_test_id(f"row-{short}")).to_have_attribute("data-state", "backlog")
    expect(page.get_by_test_id(f"status-{short}")).to_have_text("backlog 4")
    expect(page.get_by_test_id("stat-backlog-skus")).to_have_text("1")
    expect(page.get_by_test_id("stat-processed")).to_have_text("4", timeout=WAIT_MS)
    # The level 5 opened a supplier order up to the target of 100.
    so = page.get_by_test_id(f"so-SO-{short}-1")
    expect(so).to_contain_text("95", timeout=WAIT_MS)
    expect(so).to_contain_text("open")
    expect(page.get_by_test_id("stat-open-supplier-orders")).to_have_text("1")

    produce_now(kafka, worker.topic("orders"), [b"{not json"])
    expect(page.get_by_test_id("stat-dead-lettered")).to_have_text("1", timeout=WAIT_MS)
    expect(page.get_by_test_id("empty-dead-letters")).to_be_hidden(timeout=WAIT_MS)
    expect(page.get_by_test_id("dead-letters-list")).to_contain_text("{not json")

    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    """``python -m faust -A app <args>``; its stdout, or a failed assertion."""
    result = faust_cli(env, *args, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# 1,400 events of the demo: mid-story, with a backlog, open supplier orders and expedites.
DEMO = ["--scenario", "demo", "--seed", "11", "--count", "1400"]


def test_dashboard_shows_the_demo_scenario(worker: Worker, page: Page) -> None:
    env = worker.env()
    cli(env, "inject", *DEMO, "--quiet")
    cli(env, "expect", *DEMO, "--check", worker.url, "--timeout", "90")
    expected = json.loads(cli(env, "expect", *DEMO, "--json"))
    skus = expected["skus"]
    backlog = sorted(sku for sku, doc in skus.items() if doc["level"] < 0)
    open_orders = [d["open_supplier_order"] for d in skus.values() if d["open_supplier_order"]]
    assert backlog and open_orders and expected["expedites"]  # what makes the picture

    page.goto(worker.url + "/")
    rows = page.locator('[data-testid="stock-rows"] tr')
    expect(rows).to_have_count(len(skus), timeout=WAIT_MS)
    expect(page.locator('tr[data-state="backlog"]')).to_have_count(len(backlog))
    # Sorted by level, lowest first: the backlog leads the table.
    expect(rows.first).to_have_attribute("data-state", "backlog")
    for sku in backlog:
        expect(page.get_by_test_id(f"level-{sku}")).to_have_text(f"{skus[sku]['level']:,}")
    stats = expected["stats"]
    processed = stats["processed_orders"] + stats["processed_stock_moves"]
    expect(page.get_by_test_id("stat-processed")).to_have_text(f"{processed:,}")
    expect(page.get_by_test_id("stat-dead-lettered")).to_have_text(f"{stats['dead_lettered']:,}")
    expect(page.get_by_test_id("stat-open-supplier-orders")).to_have_text(str(len(open_orders)))
    expect(page.get_by_test_id("expedites-list").locator("li").first).to_be_visible()
    expect(page.get_by_test_id("window-result-rows").locator("tr").first).to_be_visible()
    bars = page.get_by_test_id("window-chart").locator("rect.bar")
    expect(bars.nth(5)).to_be_attached(timeout=WAIT_MS)  # minutes of closed windows
    page.wait_for_timeout(500)  # let the flash of the last update fade

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-demo.png"
    page.screenshot(path=str(shot))
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")


# --- /metrics ---------------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')

Labels = tuple[tuple[str, str], ...]


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, Labels], float]]:
    """Parse the text format strictly: (family -> type, (name, labels) -> value)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"TYPE twice: {line}"
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, raw_labels, raw_value = m.groups()
            labels: list[tuple[str, str]] = []
            if raw_labels:
                pos = 0
                while pos < len(raw_labels):
                    lm = LABEL.match(raw_labels, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels.append((lm.group(1), lm.group(2)))
                    pos = lm.end()
            value = float(raw_value)  # also +Inf / NaN
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            declared = types.get(name) or types.get(family)
            assert declared, f"sample before its TYPE: {line}"
            if declared == "counter":
                assert name.endswith("_total") and value >= 0, line
            key = (name, tuple(labels))
            assert key not in samples, f"sample twice: {line}"
            samples[key] = value
    return types, samples


def scrape(worker: Worker) -> tuple[dict[str, str], dict[tuple[str, Labels], float]]:
    status, content_type, body = raw_get(worker, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse_metrics(body.decode())


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(labels.items())), 0.0)


def test_metrics_in_prometheus_text_format(worker: Worker, kafka: str) -> None:
    types, samples = scrape(worker)
    assert types["stock_tracker_events_in_total"] == "counter"
    assert types["stock_tracker_events_out_total"] == "counter"
    assert types["stock_tracker_dead_letters_total"] == "counter"
    assert types["stock_tracker_batch_latency_seconds"] == "histogram"
    assert types["stock_tracker_consumer_lag"] == "gauge"
    for gauge in ("processed_events", "duplicate_events", "late_orders"):
        assert types[f"stock_tracker_{gauge}"] == "gauge"
    assert value(samples, "stock_tracker_dead_letters_total") == 0
    assert value(samples, "stock_tracker_processed_events") == 0

    orders, stock = worker.topic("orders"), worker.topic("stock")
    sku = unique("SKU-M")
    produce_now(kafka, stock, [stock_event(sku, 30), stock_event(sku, 5, "return")])
    produce_now(kafka, orders, [order_event(sku, 2) for _ in range(3)] + [b"[1, 2"])
    worker.wait_for("/stats", lambda s: s["processed"] == 5 and s["dead_lettered"] == 1)

    deadline = time.monotonic() + 30
    while True:
        types, samples = scrape(worker)
        lag = {
            labels: v
            for (name, labels), v in samples.items()
            if name == "stock_tracker_consumer_lag"
        }
        input_lag = [v for labels, v in lag.items() if dict(labels)["topic"] in (orders, stock)]
        if (input_lag and not any(input_lag)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert value(samples, "stock_tracker_events_in_total", topic=orders) == 4
    assert value(samples, "stock_tracker_events_in_total", topic=stock) == 2
    assert value(samples, "stock_tracker_dead_letters_total") == 1
    out = "stock_tracker_events_out_total"
    assert value(samples, out, topic=worker.topic("dead-letters")) == 1
    assert value(samples, out, topic=worker.topic("order-status")) == 3
    assert value(samples, out, topic=worker.topic("stock-levels")) == 5
    assert value(samples, "stock_tracker_processed_events") == 5
    assert value(samples, "stock_tracker_processed_orders") == 3
    assert value(samples, "stock_tracker_dead_lettered_events") == 1
    assert value(samples, "stock_tracker_duplicate_events") == 0

    # Histogram: cumulative buckets ending in +Inf == count, and at least one batch seen.
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "stock_tracker_batch_latency_seconds_bucket"
    )
    assert buckets[0][0] == 0.005 and buckets[-2][0] == 10 and math.isinf(buckets[-1][0])
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    count = value(samples, "stock_tracker_batch_latency_seconds_count")
    assert count >= 1 and counts[-1] == count
    assert value(samples, "stock_tracker_batch_latency_seconds_sum") >= 0

    # Lag: every input partition with data is reported, and all of it was consumed.
    assert input_lag and not any(input_lag), lag
    for labels in lag:
        assert dict(labels).keys() == {"topic", "partition"}
        assert dict(labels)["partition"].isdigit()


# --- static files and settings ----------------------------------------------------------


def test_static_files_config_and_traversal(worker: Worker) -> None:
    status, content_type, body = raw_get(worker, "/")
    assert status == 200 and content_type == "text/html; charset=utf-8"
    assert b"/static/dashboard.js" in body
    for name, kind in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        status, content_type, body = raw_get(worker, f"/static/{name}")
        assert status == 200 and content_type == f"{kind}; charset=utf-8", (name, content_type)
        assert body

    for path in (
        # The static folder is app/serving/static: its neighbours, and the repository's.
        "/static/../app/main.py",
        "/static/..%2Fweb.py",
        "/static/%2e%2e%2fweb.py",
        "/static/..%2F..%2Fmain.py",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/nope.js",
        "/static/",
        "/static/.",
    ):
        status, content_type, body = raw_get(worker, path)
        assert status == 404, (path, status, body[:200])
        assert content_type.startswith("application/json"), (path, content_type)
        doc = json.loads(body)
        assert set(doc) == {"error"} and doc["error"], (path, doc)
        assert b"import" not in body and b"[project]" not in body

    status, _, body = raw_get(worker, "/config")
    assert status == 200
    assert json.loads(body) == {
        "app_id": worker.app_id,
        "reorder_point": 20,
        "reorder_target": 100,
        "tumbling_seconds": 60,
        "hopping_seconds": 300,
        "hopping_step_seconds": 60,
        "window_grace_seconds": 10,
        "expedite_threshold": 2,
        "topic_partitions": 4,
    }
    status, _, body = raw_get(worker, "/dashboard/windows")
    assert status == 200 and json.loads(body) == {"kind": "tumbling", "size": 60, "windows": []}
    status, _, body = raw_get(worker, "/dashboard/windows?limit=0")
    assert status == 400 and "error" in json.loads(body)


# --- a loading state, and counts that are counts -----------------------------------------


def test_dashboard_says_loading_until_the_first_answer(worker: Worker, page: Page) -> None:
    # The stock list never answers: the page must not claim there are no SKUs.
    page.route("**/stock/?limit=1000", lambda route: None)
    page.goto(worker.url + "/")
    expect(page.get_by_test_id("empty-stock")).to_have_text("Loading stock levels…")
    expect(page.get_by_test_id("empty-stock")).to_be_visible()
    # The first answer arrives: the empty state says what is true.
    page.unroute("**/stock/?limit=1000")
    page.goto(worker.url + "/")
    expect(page.get_by_test_id("empty-stock")).to_have_text(
        "No SKUs yet: produce to the orders or stock topic", timeout=WAIT_MS
    )


def test_expedites_badge_counts_every_expedite(worker: Worker, kafka: str, page: Page) -> None:
    # Three orders of one SKU at one time put it over the threshold (2) in each of the
    # 5 hopping windows (300 s every 60 s) that cover that time: 5 expedites per SKU.
    skus = [unique("SKU-X") for _ in range(5)]
    ts = "2026-11-26T12:00:30Z"
    orders = [{**order_event(sku, 1), "ts": ts} for sku in skus for _ in range(3)]
    produce_now(kafka, worker.topic("orders"), orders, key=lambda v: v["sku"])
    worker.wait_for("/stats", lambda s: s["processed_orders"] == 15)
    stats = worker.wait_for("/stats", lambda s: s["expedites"] == 25)
    assert stats["expedites"] == 25
    status, recent = worker.get("/recent")
    assert status == 200 and len(recent["expedites"]) == 20  # the list is capped

    page.goto(worker.url + "/")
    expect(page.get_by_test_id("expedites-list").locator("li")).to_have_count(20, timeout=WAIT_MS)
    expect(page.get_by_test_id("expedite-count")).to_have_text("25")
    expect(page.get_by_test_id("expedite-sub")).to_contain_text("newest 20 shown")
