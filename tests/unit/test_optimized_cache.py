"""The Bazel HTTP cache server behind build-optimized, run in-process on 127.0.0.1 (no Docker)."""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tfstack.build.bazel_cache import CacheServer, server_source


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CacheServer]:
    srv = CacheServer(tmp_path / "cache", ("127.0.0.1", 0))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def request(
    srv: CacheServer, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_put_then_get_returns_the_entry_and_counts_hits_and_misses(server: CacheServer) -> None:
    """What Bazel uploads comes back byte for byte; misses and hits are counted per kind."""
    blob = b"compiled object" * 1000
    digest = hashlib.sha256(blob).hexdigest()
    assert request(server, "GET", f"/cas/{digest}")[0] == 404
    assert request(server, "PUT", f"/cas/{digest}", blob)[0] == 200
    status, body = request(server, "GET", f"/cas/{digest}")
    assert (status, body) == (200, blob)
    assert request(server, "HEAD", f"/cas/{digest}")[0] == 200
    stats = json.loads(request(server, "GET", "/stats")[1])
    assert stats == {"ac_hit": 0, "ac_miss": 0, "cas_hit": 2, "cas_miss": 1, "put": 1}


def test_entries_persist_on_disk_across_server_restarts(tmp_path: Path) -> None:
    """The cache is the directory (a Docker volume in real builds), not the process."""
    digest = "a" * 64
    first = CacheServer(tmp_path / "c", ("127.0.0.1", 0))
    thread = threading.Thread(target=first.serve_forever, daemon=True)
    thread.start()
    assert request(first, "PUT", f"/ac/{digest}", b"result")[0] == 200
    first.shutdown()
    first.server_close()
    second = CacheServer(tmp_path / "c", ("127.0.0.1", 0))
    thread = threading.Thread(target=second.serve_forever, daemon=True)
    thread.start()
    try:
        assert request(second, "GET", f"/ac/{digest}") == (200, b"result")
    finally:
        second.shutdown()
        second.server_close()


def test_chunked_uploads_are_accepted(server: CacheServer) -> None:
    digest = "b" * 64
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("PUT", f"/cas/{digest}", body=iter([b"part1-", b"part2"]), encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    assert request(server, "GET", f"/cas/{digest}") == (200, b"part1-part2")


def test_paths_outside_the_cache_layout_are_refused(server: CacheServer) -> None:
    """Only /ac|cas/<sha256> are entries: no traversal, no arbitrary files."""
    assert request(server, "PUT", "/cas/../../etc/passwd", b"x")[0] == 400
    assert request(server, "GET", "/ac/not-a-digest")[0] == 404
    assert not list(Path(server.root).rglob("passwd"))


def test_server_source_runs_without_tfstack() -> None:
    """The container runs this text with plain python3: it may import only the stdlib."""
    tree = ast.parse(server_source())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "tfstack" not in imported
    assert imported <= {"__future__", "json", "os", "re", "sys", "tempfile", "threading", "http",
                        "pathlib"}  # fmt: skip
