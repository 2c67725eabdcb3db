"""A small HTTP/1.1 server for the REST API: asyncio protocol + httptools, no ASGI layer.

The REST API needs little of HTTP: a method, a path and a body in; a status, a content type and a
body out. uvicorn's ASGI plumbing (scope dicts, receive/send coroutines, a task per request)
cost more than the whole inference of a small model, so this module speaks HTTP directly:

- keep-alive (HTTP/1.1 default, HTTP/1.0 with ``Connection: keep-alive``), pipelined requests
  answered in order, ``Transfer-Encoding: chunked`` request bodies, ``Expect: 100-continue``;
- bodies are bounded: a declared ``Content-Length`` over the limit is answered 413 before the
  body is read, and a chunked body growing over it is dropped and answered 413;
- malformed HTTP gets ``400 Invalid HTTP request received.`` (plain text) and the connection
  closes; idle keep-alive connections close after ``keep_alive_timeout`` seconds;
- a request must deliver its headers within ``header_timeout`` seconds and keep its body moving
  (no gap over ``body_timeout`` seconds), otherwise ``408`` and the connection closes: a client
  that stops mid-request cannot hold a connection forever;
- headers are capped in total size and count (``431``, then close), counted on the raw bytes
  before the parser accumulates them (long values would otherwise cost quadratic time);
- ``Content-Encoding: gzip`` bodies are inflated off the event loop and never beyond the body
  limit (``413``; a gzip bomb costs at most the limit); other encodings get ``415``;
- the path handed to the application is percent-decoded and without the query string;
- ``HEAD`` gets the headers of the answer without its body (the connection stays usable);
- ``shutdown(grace)`` stops accepting, lets in-flight requests finish (up to ``grace`` seconds),
  closes idle connections and then every remaining one.

The application is ``handle(method, path, body) -> (status, content_type, body)``, a coroutine
function, or a plain function returning the same tuple without awaiting (answers with no I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

Answer = tuple[int, bytes, bytes]
"""(status, content type, body)."""
Handler = Callable[[str, str, bytes], "Answer | Awaitable[Answer]"]
TooLarge = Callable[[int, int], Answer]
ErrorAnswer = Callable[[int, str], Answer]
"""(HTTP status, message) -> the answer the application gives for a protocol-level refusal."""

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Request Entity Too Large",
    415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_INVALID = b"Invalid HTTP request received."
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_PIPELINED = 16
MAX_HEADER_BYTES = 64 << 10
"""Request line plus headers; browsers and proxies stay far below (nginx: 4 x 8 KiB)."""
MAX_HEADER_COUNT = 100
HEADER_TIMEOUT = 30.0
BODY_TIMEOUT = 30.0
_GZIP = (b"gzip", b"x-gzip")
_INFLATE_STEP = 1 << 20


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing oversized headers."""


def plain_error(status: int, message: str) -> Answer:
    return status, b"text/plain; charset=utf-8", message.encode("utf-8")


def inflate_gzip(body: bytes, limit: int) -> bytes | None:
    """The inflated gzip ``body`` (several members allowed), or None once it exceeds ``limit``
    bytes; inflation stops there, so a bomb costs at most ``limit``. ValueError when malformed."""
    pieces: list[bytes] = []
    size = 0
    data = body
    while data:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            while data:
                piece = inflater.decompress(data, min(_INFLATE_STEP, limit - size + 1))
                size += len(piece)
                if size > limit:
                    return None
                pieces.append(piece)
                data = inflater.unconsumed_tail
            if not inflater.eof:
                raise ValueError("the gzip stream is truncated")
        except zlib.error as exc:
            raise ValueError(str(exc)) from None
        data = inflater.unused_data
    return b"".join(pieces)


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))


_STATUS_LINES = {status: _status_line(status) for status in REASONS}


def render(status: int, content_type: bytes, body: bytes, *, close: bool) -> bytes:
    """A complete response: status line, content-type, content-length (and connection: close)."""
    head = _STATUS_LINES.get(status) or _status_line(status)
    tail = b"connection: close\r\n\r\n" if close else b"\r\n"
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s" % (
        head,
        content_type,
        len(body),
        tail,
        body,
    )


class HttpServer:
    """Serves ``handler`` on a listening socket."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        too_large: TooLarge,
        keep_alive_timeout: float = 75.0,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_count: int = MAX_HEADER_COUNT,
        error_answer: ErrorAnswer = plain_error,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.too_large = too_large
        self.keep_alive_timeout = keep_alive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count
        self.error_answer = error_answer
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.base_events.Server | None = None
        self.closing = False

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self), sock=sock)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; finish in-flight requests within ``grace`` seconds; then answer the
        requests still running 503 (their work's answer is dropped) and close every connection."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cut = self.error_answer(
            503,
            f"The server is shutting down and this request did not finish within the {grace:g} s "
            "grace (--shutdown_grace_seconds); retry it (on another replica)",
        )
        for connection in list(self.connections):
            if connection.busy:
                connection.cut(cut)
            else:
                connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.chunks: list[bytes] = []
        self.size = 0
        self.declared_too_large = 0
        self.expect_continue = False
        self.encoding = b""
        self.pending: deque[tuple[str, bytes, bytes, bool, int, bytes]] = deque()
        self.busy = False
        self.closed = False
        self.close_after = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.read_timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.reading_headers = False
        self.discarding = False
        self.header_bytes = 0
        self.header_count = 0

    # -- connection --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.closing:
            transport.close()
            return
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self._cancel_read_timer()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.discarding:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail()
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._headers_too_large()
            else:
                self._fail()
            return
        except httptools.HttpParserError:
            self._fail()
            return
        if self.reading_headers:
            # Raw bytes, counted before httptools joins them into one value (quadratic).
            self.header_bytes += len(data)
            if self.header_bytes > self.server.max_header_bytes:
                self._headers_too_large()
        elif self.read_timer is not None and not self.declared_too_large:
            self._arm_read_timer(self.server.body_timeout)  # the body is moving

    def _headers_too_large(self) -> None:
        self._refuse(
            431,
            f"Request headers exceed the limit of {self.server.max_header_bytes} bytes or "
            f"{self.server.max_header_count} fields; send fewer or shorter headers",
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read to its end, then close the connection."""
        if self.closed:
            return
        self._cancel_read_timer()
        if self.busy or self.pending:
            # Earlier pipelined requests are still being answered: finish them, then close.
            self.close_after = True
            self.discarding = True
            self.transport.pause_reading()
            return
        _, content_type, body = self.server.error_answer(status, message)
        self.transport.write(render(status, content_type, body, close=True))
        self.closed = True
        self.transport.close()

    def _arm_read_timer(self, seconds: float) -> None:
        self._cancel_read_timer()
        self.read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.reading_headers:
            message = (
                f"Request headers not received within {self.server.header_timeout:g} s; "
                "send the whole request promptly"
            )
        else:
            message = (
                f"Request body stalled for {self.server.body_timeout:g} s before its declared "
                "end; send the whole body promptly"
            )
        self._refuse(408, message)

    def _fail(self) -> None:
        if not self.closed:
            self.transport.write(render(400, b"text/plain; charset=utf-8", _INVALID, close=True))
            self.closed = True
            self.transport.close()

    def close_when_idle(self) -> None:
        self.close_after = True
        if not self.busy and not self.pending:
            self.abort(graceful=True)

    def cut(self, answer: Answer) -> None:
        """Answer the request in progress with ``answer`` now (its own answer, when the work ends,
        is dropped) and close the connection once that is sent."""
        self._write(answer, keep_alive=False)

    def abort(self, *, graceful: bool = False) -> None:
        self.closed = True
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = self.loop.call_later(self.server.keep_alive_timeout, self.close_when_idle)

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.chunks = []
        self.size = 0
        self.declared_too_large = 0
        self.expect_continue = False
        self.encoding = b""
        self.reading_headers = True
        self.header_bytes = 0
        self.header_count = 0
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._arm_read_timer(self.server.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.server.max_header_count or (
            len(name) + len(value) > self.server.max_header_bytes
        ):
            raise _HeadersTooLarge
        lowered = name.lower()
        if lowered == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return  # httptools refuses a malformed length itself
            if declared > self.server.max_body_bytes:
                self.declared_too_large = declared
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif lowered == b"content-encoding":
            self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self._arm_read_timer(self.server.body_timeout)
        if self.declared_too_large:
            # Answer now (413, then close): the body is never read.
            self._queue(self.parser.get_method().decode("ascii", "replace"), False)
        elif self.expect_continue:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.declared_too_large:
            return
        self.size += len(body)
        if self.size > self.server.max_body_bytes:
            self.chunks = []
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        if self.declared_too_large:
            return  # answered at the headers
        self._queue(
            self.parser.get_method().decode("ascii", "replace"),
            bool(self.parser.should_keep_alive()),
        )

    def _queue(self, method: str, keep_alive: bool) -> None:
        too_large = self.declared_too_large or (
            self.size if self.size > self.server.max_body_bytes else 0
        )
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.pending.append((method, self.url, body, keep_alive, too_large, self.encoding))
        if len(self.pending) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    # -- answering -------------------------------------------------------------------------------
    def _next(self) -> None:
        """Answer pending requests in order; synchronous answers need no task."""
        while self.pending and not self.closed:
            method, url, body, keep_alive, too_large, encoding = self.pending.popleft()
            if too_large:
                answer: Any = self.server.too_large(too_large, self.server.max_body_bytes)
                keep_alive = False  # the rest of an oversized body is not read
            else:
                try:
                    path = _path(url)
                except ValueError:
                    self._fail()
                    return
                if not encoding or encoding == b"identity":
                    answer = self.server.handler(method, path, body)
                elif encoding in _GZIP:
                    answer = self._inflated(method, path, body)
                else:
                    answer = self.server.error_answer(
                        415,
                        f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; "
                        "send identity or gzip",
                    )
            if isinstance(answer, tuple):
                self._write(answer, keep_alive, head=method == "HEAD")
                continue
            self.busy = True
            task = self.loop.create_task(answer)
            task.add_done_callback(
                functools.partial(self._finished, keep_alive=keep_alive, head=method == "HEAD")
            )
            return
        self.busy = False
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        if not self.closed:
            if self.close_after:
                self.abort(graceful=True)
            else:
                self._arm_idle_timer()

    async def _inflated(self, method: str, path: str, body: bytes) -> Answer:
        """Inflate a gzip body in a thread (it may take a while), then answer it."""
        limit = self.server.max_body_bytes
        try:
            inflated = await self.loop.run_in_executor(None, inflate_gzip, body, limit)
        except ValueError as exc:
            return self.server.error_answer(
                400, f"Content-Encoding gzip: the body is not valid gzip ({exc})"
            )
        if inflated is None:
            return self.server.error_answer(
                413,
                f"Content-Encoding gzip: the body inflates to more than the limit of {limit} "
                "bytes (--rest_api_max_body_bytes); send fewer instances per request",
            )
        answer = self.server.handler(method, path, inflated)
        return answer if isinstance(answer, tuple) else await answer

    def _finished(self, task: asyncio.Task[Answer], *, keep_alive: bool, head: bool) -> None:
        self.busy = False
        if task.cancelled():
            self.abort()
            return
        error = task.exception()
        if error is not None:
            answer: Answer = (500, b"text/plain; charset=utf-8", b"Internal Server Error")
            keep_alive = False
        else:
            answer = task.result()
        self._write(answer, keep_alive, head=head)
        self._next()

    def _write(self, answer: Answer, keep_alive: bool, *, head: bool = False) -> None:
        if self.closed:
            return
        status, content_type, body = answer
        close = not keep_alive or self.server.closing
        response = render(status, content_type, body, close=close)
        if head:  # the headers a GET would get, without the body
            response = response[: len(response) - len(body)]
        self.transport.write(response)
        if close:
            self.closed = True
            self.pending.clear()
            self.transport.close()


def _path(url: bytes) -> str:
    """The percent-decoded path of a request target, as uvicorn's ``scope["path"]``."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError as exc:
        raise ValueError(f"invalid URL {url!r}") from exc
    raw = parsed.path or b"/"
    path = raw.decode("ascii", "surrogateescape")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return path
