"""A Bazel HTTP remote cache small enough to run with the base image's python3 (stdlib only).

Why it exists: the legacy Docker builder (no BuildKit here) cannot mount a cache volume into a
``RUN`` step, so ``bazel build`` inside ``Dockerfile.devel`` would always start from zero. Instead
the build talks to this server over HTTP (``--remote_cache=http://127.0.0.1:PORT``, the build's
network namespace is the server container's), and the server keeps every action result and output
on a named Docker volume that outlives builds, images and flag changes.

Protocol (Bazel's HTTP caching): ``GET``/``HEAD``/``PUT`` on ``/ac/<sha256>`` (action results) and
``/cas/<sha256>`` (content). ``GET /stats`` returns hit/miss/upload counters as JSON so a build can
report how much it reused. Writes go to a temporary file and are renamed into place, so a reader
never sees half an entry.

This module must stay importable without tfstack: :func:`server_source` ships its own text to the
container, where it runs as ``python3 - ROOT PORT``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ENTRY = re.compile(r"^/(ac|cas)/([0-9a-f]{64})$")
CHUNK = 1 << 20


class CacheStats:
    """Counters since the server started; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"ac_hit": 0, "ac_miss": 0, "cas_hit": 0, "cas_miss": 0, "put": 0}

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class CacheHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Bazel reuses connections
    server: CacheServer

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per entry would drown the container log

    def _entry(self) -> tuple[str, Path] | None:
        match = ENTRY.match(self.path.split("?", 1)[0])
        if match is None:
            return None
        kind, digest = match.groups()
        return kind, self.server.root / kind / digest[:2] / digest

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, *, with_body: bool) -> None:
        if self.path == "/stats":
            body = json.dumps(self.server.stats.snapshot(), sort_keys=True).encode()
            self._reply(200, body, "application/json")
            return
        entry = self._entry()
        if entry is None:
            self._reply(404, b"not a cache entry path\n")
            return
        kind, path = entry
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            self.server.stats.add(f"{kind}_miss")
            self._reply(404)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.server.stats.add(f"{kind}_hit")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            while with_body and (chunk := handle.read(CHUNK)):
                self.wfile.write(chunk)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _body_chunks(self) -> list[bytes] | None:
        """The request body, from Content-Length or chunked transfer encoding."""
        chunks: list[bytes] = []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return chunks
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        remaining = int(length)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return chunks

    def do_PUT(self) -> None:
        entry = self._entry()
        chunks = self._body_chunks()
        if entry is None or chunks is None:
            self.close_connection = True
            self._reply(400, b"expected PUT /ac|cas/<sha256> with a body\n")
            return
        _, path = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, path)
        self.server.stats.add("put")
        self._reply(200)


class CacheServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root
        self.stats = CacheStats()
        for kind in ("ac", "cas"):
            (root / kind).mkdir(parents=True, exist_ok=True)
        super().__init__(address, CacheHandler)


def server_source() -> str:
    """This module's text, to run in a container as ``python3 - ROOT PORT``."""
    return Path(__file__).read_text()


def main(argv: list[str]) -> None:
    root, port = Path(argv[1]), int(argv[2])
    server = CacheServer(root, ("0.0.0.0", port))
    print(f"bazel cache serving {root} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
