"""The REST server's HTTP layer (modelserver.httpserver) and where handlers run (dispatch).

The HTTP layer replaced uvicorn for speed; these tests pin the HTTP behaviour clients rely on:
keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``, body limits before reading,
malformed requests, HTTP/1.0, query strings and percent-encoding.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator

import pytest

from modelserver.dispatch import INLINE_MAX_BODY, INLINE_MAX_SECONDS, InlinePolicy

from .conftest import ModelFiles, RunningServer, start_server

BODY = b'{"instances": [1.0, 2.0, 5.0]}'
PREDICTIONS = [2.5, 3.0, 4.5]


@pytest.fixture(scope="module")
def served(models: ModelFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("http")
    models.place(base / "hp", 1, "v1")
    server = start_server(
        "--model_name=hp", f"--model_base_path={base / 'hp'}", "--rest_api_max_body_bytes=4096"
    )
    yield server
    server.stop()


def _raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def _predict_request(path: str = "/v1/models/hp:predict", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n{extra}\r\n"
    ).encode() + BODY


def test_keep_alive_serves_many_requests_on_one_connection(served: RunningServer) -> None:
    """One HTTP/1.1 connection answers request after request (no reconnects), each with the
    right content type and length."""
    connection = http.client.HTTPConnection("127.0.0.1", served.rest_port, timeout=10)
    try:
        connection.connect()
        first_socket = connection.sock
        for _ in range(20):
            connection.request("POST", "/v1/models/hp:predict", body=BODY)
            response = connection.getresponse()
            data = response.read()
            assert response.status == 200
            assert response.getheader("content-type") == "application/json"
            assert int(response.getheader("content-length") or -1) == len(data)
            assert json.loads(data) == {"predictions": PREDICTIONS}
        assert connection.sock is first_socket
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_order(served: RunningServer) -> None:
    """Requests written back to back before any answer get their answers in request order."""
    requests = _predict_request() + b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\n\r\n"
    requests += _predict_request(extra="Connection: close\r\n")
    data = _raw(served.rest_port, requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]
    assert json.loads(data.rsplit(b"\r\n\r\n", 1)[1]) == {"predictions": PREDICTIONS}


def test_chunked_request_body(served: RunningServer) -> None:
    """A ``Transfer-Encoding: chunked`` body is reassembled before decoding."""
    half = len(BODY) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        BODY[:half],
        len(BODY) - half,
        BODY[half:],
    )
    request = (
        b"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked
    )
    data = _raw(served.rest_port, request)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"predictions": PREDICTIONS}


def test_expect_100_continue(served: RunningServer) -> None:
    """A client sending ``Expect: 100-continue`` (curl does for bodies over 1 KiB) gets
    ``100 Continue`` before it sends the body, then the answer."""
    head = (
        f"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(BODY)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_declared_oversized_body_is_413_without_reading_it(served: RunningServer) -> None:
    """A Content-Length over --rest_api_max_body_bytes is answered 413 (JSON error) at once,
    without waiting for the body, and the connection closes; no 100 Continue is sent."""
    head = (
        b"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as sock:
        sock.sendall(head + b"[" * 100)
        data = b""
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data
    assert b"connection: close" in data.lower()
    assert "exceeds the limit" in json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]


def test_chunked_body_growing_over_the_limit_is_413(served: RunningServer) -> None:
    """A chunked body (no declared length) that grows past the limit is refused with 413."""
    chunk = b"[" * 3000
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    request = (
        b"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
    )
    data = _raw(served.rest_port, request)
    assert data.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ],
)
def test_malformed_http_is_400_and_closes(served: RunningServer, garbage: bytes) -> None:
    """Bytes that are not HTTP get ``400 Invalid HTTP request received.`` and the connection
    closes (the server keeps serving others)."""
    data = _raw(served.rest_port, garbage)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"Invalid HTTP request received.")
    assert served.post_json("/v1/models/hp:predict", {"instances": [1.0]})[0] == 200


def test_http_1_0_closes_after_the_answer(served: RunningServer) -> None:
    """An HTTP/1.0 request without keep-alive gets its answer and ``connection: close``."""
    request = (
        f"POST /v1/models/hp:predict HTTP/1.0\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    data = _raw(served.rest_port, request)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in data.lower()


def test_query_string_ignored_and_path_percent_decoded(served: RunningServer) -> None:
    """``?query`` is not part of the route and ``%xx`` escapes are decoded before routing."""
    status, data = served.request("POST", "/v1/models/hp:predict?verbose=1", BODY)
    assert status == 200 and json.loads(data) == {"predictions": PREDICTIONS}
    status, data = served.request("POST", "/v1/models/%68p:predict", BODY)
    assert status == 200 and json.loads(data) == {"predictions": PREDICTIONS}


def test_tiny_model_handler_learns_to_run_inline(served: RunningServer) -> None:
    """After a few requests the REST predict handler of a tiny model is estimated well under
    the inline limit, so it runs on the event loop (no thread hop) and keeps answering."""
    # The limit is raised so the outcome does not depend on how loaded the machine is: what is
    # under test is the learning from real runs and the inline path, not this machine's speed.
    app_policy = _rest_policy(served)
    limit = app_policy.max_seconds
    app_policy.max_seconds = 5.0
    try:
        for _ in range(5):
            assert served.post_json("/v1/models/hp:predict", {"instances": [1.0]})[0] == 200
        assert app_policy.inline(("predict", "hp"), len(BODY))
        status, document = served.post_json("/v1/models/hp:predict", {"instances": [1.0]})
        assert (status, document) == (200, {"predictions": [2.5]})
    finally:
        app_policy.max_seconds = limit


def _rest_policy(served: RunningServer) -> InlinePolicy:
    rest = served.server._rest
    policy = rest.handler.__self__.inline
    assert isinstance(policy, InlinePolicy)
    return policy


def test_inline_policy_decisions() -> None:
    """Unmeasured keys, large bodies and a disabled policy never run inline; a cheap run makes
    a key inline; one heavy run takes it off the loop at once; contention-slowed runs raise the
    estimate only slowly."""
    policy = InlinePolicy()
    key = ("predict", "m")
    assert not policy.inline(key, 10)
    policy.note(key, INLINE_MAX_SECONDS / 10)
    assert policy.inline(key, 10)
    assert not policy.inline(key, INLINE_MAX_BODY + 1)
    policy.note(key, INLINE_MAX_SECONDS * 2)  # a slowed run: estimate creeps 5%
    assert policy.inline(key, 10)
    policy.note(key, INLINE_MAX_SECONDS * 100)  # heavy: off the loop now
    assert not policy.inline(key, 10)
    disabled = InlinePolicy(enabled=False)
    disabled.note(key, INLINE_MAX_SECONDS / 10)
    assert not disabled.inline(key, 10)


def test_batching_never_runs_inline(
    models: ModelFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With --enable_batching the REST handler waits for other requests, so it always goes to
    the pool, however cheap the model."""
    base = tmp_path_factory.mktemp("http-batching")
    models.place(base / "hp", 1, "v1")
    server = start_server(
        "--model_name=hp", f"--model_base_path={base / 'hp'}", "--enable_batching=true"
    )
    try:
        for _ in range(3):
            assert server.post_json("/v1/models/hp:predict", {"instances": [1.0]})[0] == 200
        assert not _rest_policy(server).inline(("predict", "hp"), len(BODY))
    finally:
        server.stop()


def test_head_gets_headers_without_body_and_keeps_the_connection(served: RunningServer) -> None:
    """A HEAD request is answered with headers only (content-length of the would-be body), so
    the next request on the same connection is parsed correctly."""
    requests = b"HEAD /v1/models/hp HTTP/1.1\r\nHost: x\r\n\r\n" + _predict_request(
        extra="Connection: close\r\n"
    )
    data = _raw(served.rest_port, requests)
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 400 ")  # upstream routes only GET/POST
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {"predictions": PREDICTIONS}
