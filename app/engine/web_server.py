"""The worker's web server: Faust's aiohttp driver, answering in JSON even what aiohttp
itself rejects.

Faust builds its web server (``App._new_web``, overridden in app/engine/faust_app.py);
this is the class it gets: no built-in index and debug pages (the app owns ``/``), and a
connection handler that turns a request aiohttp's parser rejects into a JSON 4xx
instead of a traceback. The views themselves are in app/serving/.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import orjson
from aiohttp import http_exceptions
from aiohttp import web as aioweb
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from faust.web.drivers.aiohttp import Web as AiohttpWeb

log = logging.getLogger(__name__)


def json_response(data: Any, status: int = 200) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> aioweb.Response:
    return json_response({"error": message}, status=status)


_REQUEST_LINE = re.compile(rb"[A-Za-z]+ [/hH*]")


def client_error(exc: BaseException | None, status: int) -> tuple[int, str]:
    """Status and ``error`` text for a request aiohttp's own parser rejected.

    The text never quotes the request: the parser's own messages repeat the request line
    or header (up to 8 KB of whatever a client sent).
    """
    if isinstance(exc, http_exceptions.LineTooLong):
        # args[0] is the start of the long line: the URL (C parser), the request line
        # (Python parser), or a header (its value, or its whole line).
        line = exc.args[0] if exc.args else b""
        head = bytes(line[:16]) if isinstance(line, (bytes, bytearray)) else b""
        if head[:1] == b"/" or head[:4].lower() == b"http" or _REQUEST_LINE.match(head):
            return 414, "URI too long: the request line is over 8190 bytes"
        return 431, "request header fields too large: a header line is over 8190 bytes"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return 400, "malformed request: unknown or malformed HTTP method"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return 400, "malformed request: invalid URL"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return 400, "malformed request: invalid request line"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return 400, "malformed request: invalid header"
    if isinstance(exc, http_exceptions.PayloadEncodingError):
        return 400, "malformed request: invalid body framing (Content-Length/Transfer-Encoding)"
    code = getattr(exc, "code", status)
    return (code if isinstance(code, int) and 400 <= code < 500 else 400), "malformed request"


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering the requests its parser rejects (and any
    error that escapes the middleware) with JSON, and logging a client's error without
    a traceback: a burst of junk requests must not flood the worker's log."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> aioweb.StreamResponse:
        if isinstance(exc, http_exceptions.HttpProcessingError) or 400 <= status < 500:
            status, reason = client_error(exc, status)
            log.debug("Rejected a malformed request from %s: %s", request.remote, reason)
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            status, reason = 500, "internal error (logged by the worker)"
        if request.writer.output_size > 0:  # as aiohttp: a response is already under way
            raise ConnectionError("response already started, cannot send an error")
        response = error(status, reason)
        response.force_close()
        return response


class _JsonErrorServer(Server):
    """aiohttp's Server, whose connections are :class:`JsonErrorRequestHandler`s."""

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _JsonErrorRunner(aioweb.AppRunner):
    async def _make_server(self) -> Server:
        return use_json_error_handler(await super()._make_server())


def use_json_error_handler(server: Server) -> Server:
    """Make ``server`` create :class:`JsonErrorRequestHandler` connections.

    aiohttp private API, kept here alone: ``Application._make_handler`` builds the
    Server (with its request factory and handler arguments) and offers no parameter for
    the handler class; ``Server.__call__`` (the protocol factory) instantiates
    ``RequestHandler(self, loop=self._loop, **self._kwargs)``. The same Server with
    that one method changed is what we need, hence the class swap.
    """
    server.__class__ = _JsonErrorServer
    return server


class WebServer(AiohttpWeb):
    """Faust's aiohttp server without its built-in index and debug pages (we own ``/``),
    answering even the requests aiohttp's parser rejects with JSON."""

    production_blueprints: ClassVar[list[Any]] = []
    debug_blueprints: ClassVar[list[Any]] = []

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # Faust's driver reads self._runner when it starts the server. A request whose
        # client hung up ends here too (aiohttp's default since 3.9 is to let it run on): a
        # ``?wait=S`` that another worker forwarded and then answered from elsewhere frees
        # its waiting slot at once instead of after S seconds.
        self._runner = _JsonErrorRunner(self.web_app, access_log=None, handler_cancellation=True)
