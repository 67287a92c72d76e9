"""Requests that aiohttp's own parser rejects get JSON too, and log no traceback.

Raw sockets against a real worker: each request is sent as bytes (no HTTP client would
send them), the answer read until the worker closes the connection.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.harness import Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def web_worker(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for every request of this module (they change no state)."""
    worker = Worker(kafka, tmp_path_factory.mktemp("http-errors"))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def raw_request(worker: Worker, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``; return (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            got = b"".join(chunks)
            head, sep, body = got.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


LONG = b"/stock/" + b"A" * 9000
HOST = b" HTTP/1.1\r\nHost: x\r\n"
CASES: list[tuple[str, bytes, tuple[int, ...]]] = [
    ("url-over-8kb", b"GET " + LONG + HOST + b"\r\n", (414,)),
    ("lower-case-method", b"get /health" + HOST + b"\r\n", (400,)),
    ("junk-method", b"G@T /health" + HOST + b"\r\n", (400,)),
    ("non-ascii-in-url", b"GET /stock/\xc3\xa9\xff" + HOST + b"\r\n", (400,)),
    ("non-ascii-method", b"G\xc3\x89T /health" + HOST + b"\r\n", (400,)),
    ("bad-content-length", b"POST /health" + HOST + b"Content-Length: abc\r\n\r\n", (400,)),
    ("negative-content-length", b"GET /health" + HOST + b"Content-Length: -5\r\n\r\n", (400,)),
    (
        "two-content-lengths",
        b"GET /health" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        (400,),
    ),
    ("header-over-8kb", b"GET /health" + HOST + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n", (431,)),
    ("not-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, (400,)),
]


@pytest.mark.parametrize(("data", "statuses"), [pytest.param(d, s, id=n) for n, d, s in CASES])
def test_parser_rejections_are_json(
    web_worker: Worker, data: bytes, statuses: tuple[int, ...]
) -> None:
    status, headers, body = raw_request(web_worker, data)
    assert status in statuses, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    answer: Any = json.loads(body)
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]
    # Never the request echoed back: not the URL, not the header, not the junk.
    assert b"AAAAAAAA" not in body and b"bbbbbbbb" not in body and len(body) < 300


def test_a_burst_of_junk_logs_no_traceback_and_the_worker_still_answers(
    web_worker: Worker,
) -> None:
    worker = web_worker
    for _ in range(5):
        for _, data, _ in CASES:
            raw_request(worker, data)
    status, body = worker.get("/health")
    assert (status, body) == (200, {"status": "ok"})
    assert worker.log_path is not None
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "Error handling request" not in log
    # An ordinary unknown path is still the middleware's JSON 404.
    status, _, body = raw_request(worker, b"GET /nope" + HOST + b"Connection: close\r\n\r\n")
    assert status == 404 and json.loads(body)["error"].startswith("not found")
