"""Hostile HTTP input against the in-process server (issue #10): stalled requests get 408, oversized
headers 431, gzip bodies are inflated within the body limit, and other clients keep being served.

Timeouts are shortened on the running REST server (the protocol reads them at use time) so the
stalls take a fraction of a second instead of the production 30 s.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator

import pytest

from modelserver.httpserver import inflate_gzip

from .conftest import ModelFiles, RunningServer, start_server

BODY = b'{"instances": [1.0, 2.0, 5.0]}'
PREDICTIONS = [2.5, 3.0, 4.5]
LIMIT = 1 << 20
SHORT_TIMEOUT = 0.6


@pytest.fixture(scope="module")
def served(models: ModelFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("hardening-http")
    models.place(base / "hp", 1, "v1")
    server = start_server(
        "--model_name=hp", f"--model_base_path={base / 'hp'}", f"--rest_api_max_body_bytes={LIMIT}"
    )
    rest = server.server._rest
    rest.header_timeout = SHORT_TIMEOUT
    rest.body_timeout = SHORT_TIMEOUT
    yield server
    server.stop()


def _send_and_read(port: int, data: bytes, *, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; the answer and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _json_error(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head
    error: str = json.loads(body)["error"]
    return error


def _predict(path: str = "/v1/models/hp:predict", body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_declared_length_never_sent_gets_408_and_closes(served: RunningServer) -> None:
    """The issue's repro: Content-Length 1000 but 6 bytes sent; 408 and close, not held open."""
    data = b'POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inst'
    answer, took = _send_and_read(served.rest_port, data)
    assert _status(answer) == 408
    assert "body stalled" in _json_error(answer)
    assert b"connection: close" in answer
    assert took < SHORT_TIMEOUT + 3


def test_partial_headers_get_408_and_close(served: RunningServer) -> None:
    """Headers that never end are answered 408 once the header deadline passes."""
    answer, took = _send_and_read(served.rest_port, b"POST /v1/models/hp:predict HTTP/1.1\r\nHo")
    assert _status(answer) == 408
    assert "headers not received" in _json_error(answer)
    assert took < SHORT_TIMEOUT + 3


def test_header_deadline_is_total_not_per_byte(served: RunningServer) -> None:
    """Dribbling header bytes does not extend the header deadline (slowloris)."""
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v1/models/hp HTTP/1.1\r\n")
        answer = b""
        for index in range(40):
            try:
                sock.sendall(b"X-%d: y\r\n" % index)
            except OSError:
                break
            time.sleep(0.1)
        sock.settimeout(5)
        while chunk := sock.recv(65536):
            answer += chunk
    assert _status(answer) == 408
    assert time.monotonic() - started < 4.5


def test_stalled_chunked_body_gets_408(served: RunningServer) -> None:
    """A chunked body that stops before its last chunk is answered 408."""
    data = (
        b"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"ins\r\n'
    )
    answer, _ = _send_and_read(served.rest_port, data)
    assert _status(answer) == 408


def test_a_body_that_keeps_moving_is_not_cut(served: RunningServer) -> None:
    """A slow but steady body (each gap under the body timeout, the total over it) is served."""
    head = f"POST /v1/models/hp:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as sock:
        sock.sendall(head.encode())
        for start in range(0, len(BODY), 10):
            time.sleep(SHORT_TIMEOUT / 2)
            sock.sendall(BODY[start : start + 10])
        answer = sock.recv(65536)
    assert _status(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"predictions": PREDICTIONS}


def test_stalled_client_does_not_delay_others(served: RunningServer) -> None:
    """While a connection sits mid-body, other clients are answered at once."""
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as stalled:
        stalled.sendall(b"POST /v1/models/hp:predict HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        started = time.monotonic()
        status, body = served.request("POST", "/v1/models/hp:predict", BODY)
        assert time.monotonic() - started < 1.0
    assert status == 200
    assert json.loads(body) == {"predictions": PREDICTIONS}


def test_oversized_header_gets_431_quickly(served: RunningServer) -> None:
    """An 8 MB header value is refused with 431 after the cap, without quadratic work."""
    data = b"GET /v1/models/hp HTTP/1.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.rest_port), timeout=10) as sock:
        # The server may close before it has read everything.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = sock.recv(65536)
    assert _status(answer) == 431
    assert "Request headers exceed the limit" in _json_error(answer)
    assert time.monotonic() - started < 3


def test_too_many_headers_get_431(served: RunningServer) -> None:
    """More than 100 header fields, each small, are refused with 431."""
    headers = "".join(f"X-{index}: v\r\n" for index in range(101))
    answer, _ = _send_and_read(
        served.rest_port, f"GET /v1/models/hp HTTP/1.1\r\n{headers}\r\n".encode()
    )
    assert _status(answer) == 431


def test_ordinary_headers_are_accepted(served: RunningServer) -> None:
    """Forty headers with a 4 KB cookie (a browser-like request) are well within the caps."""
    headers = {f"X-Header-{index}": "v" * 50 for index in range(40)}
    headers["Cookie"] = "c" * 4096
    status, body = served.request("POST", "/v1/models/hp:predict", BODY, headers)
    assert status == 200, body


def test_gzip_body_is_inflated(served: RunningServer) -> None:
    """A gzip-encoded predict body is answered like the plain one (upstream accepts gzip)."""
    status, body = served.request(
        "POST", "/v1/models/hp:predict", gzip.compress(BODY), {"Content-Encoding": "gzip"}
    )
    assert status == 200, body
    assert json.loads(body) == {"predictions": PREDICTIONS}


def test_gzip_bomb_gets_413_and_costs_little(served: RunningServer) -> None:
    """A ~1 MB gzip of 1 GiB is refused with 413 once the inflated size passes the limit."""
    bomb = gzip.compress(b"\0" * (1 << 30), compresslevel=9)
    assert len(bomb) < 1_100_000 and len(bomb) < LIMIT
    started = time.monotonic()
    status, body = served.request(
        "POST", "/v1/models/hp:predict", bomb, {"Content-Encoding": "gzip"}
    )
    assert status == 413
    assert "inflates to more than the limit of 1048576 bytes" in json.loads(body)["error"]
    assert time.monotonic() - started < 2


def test_invalid_gzip_gets_400(served: RunningServer) -> None:
    """A body declared gzip that is not gzip (or is truncated) gets a JSON 400."""
    for body_bytes in (b"not gzip at all", gzip.compress(BODY)[:-12]):
        status, body = served.request(
            "POST", "/v1/models/hp:predict", body_bytes, {"Content-Encoding": "gzip"}
        )
        assert status == 400
        assert "not valid gzip" in json.loads(body)["error"]


def test_unsupported_encoding_gets_415(served: RunningServer) -> None:
    """Encodings other than identity and gzip are refused with 415 naming the encoding."""
    status, body = served.request("POST", "/v1/models/hp:predict", BODY, {"Content-Encoding": "br"})
    assert status == 415
    assert "'br' is not supported" in json.loads(body)["error"]


def test_inflate_gzip_joins_members_and_stops_at_the_limit() -> None:
    """Multi-member gzip inflates whole; output stops (None) one byte past the limit."""
    two_members = gzip.compress(b"abc") + gzip.compress(b"def")
    assert inflate_gzip(two_members, 6) == b"abcdef"
    assert inflate_gzip(two_members, 5) is None
    with pytest.raises(ValueError, match="truncated"):
        inflate_gzip(gzip.compress(b"x" * 1000)[:-20], 10_000)
