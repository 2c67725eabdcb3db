"""The bench's load client: bounded closed-loop REST or gRPC load from a separate process.

:func:`run_load` starts a fresh interpreter (pinned with ``taskset`` when asked) so the client does
not share the server's core; it runs asyncio + uvloop, REST over raw keep-alive connections parsed
with httptools, gRPC over ``grpc.aio`` with pre-serialized requests, and reports its own CPU use.
Every run targets 127.0.0.1 only and is bounded in time (:data:`HARD_MAX_SECONDS`) and count
(:data:`HARD_MAX_REQUESTS`); it stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tfstack.bench.loadgen import percentile
from tfstack.errors import StackError

LOOPBACK = "127.0.0.1"
HARD_MAX_SECONDS = 30.0
"""No single load run lasts longer than this, whatever is asked."""
HARD_MAX_REQUESTS = 500_000
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class LoadSpec:
    """One bounded load run: ``concurrency`` closed-loop clients for ``seconds`` (after
    ``warmup_s``) or until ``max_requests`` measured requests, whichever comes first."""

    kind: str  # "rest" or "grpc"
    port: int
    body: bytes
    path: str = ""  # REST only
    concurrency: int = 1
    seconds: float = 5.0
    warmup_s: float = 1.0
    max_requests: int = HARD_MAX_REQUESTS
    cpus: str | None = None  # taskset list for the client process

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "body"}
        data["body"] = base64.b64encode(self.body).decode("ascii")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        data = json.loads(text)
        data["body"] = base64.b64decode(data["body"])
        return cls(**data)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu: float  # cores the client process used during the window
    first_error: str = ""
    done_s: list[float] = field(default_factory=list)
    """When each answered request finished, in seconds since the window opened (for charts)."""
    failed_s: list[float] = field(default_factory=list)
    """When each failed request finished, in seconds since the window opened."""
    sent: int = 0
    """Every request the client finished, warm-up included (to share a server's CPU out)."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies_ms, fraction, empty=float("nan"))


def run_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` in a separate client process (pinned to ``spec.cpus`` when given)."""
    with tempfile.TemporaryDirectory(prefix="tfstack-load-") as tmp:
        output = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-c",
            "from tfstack.bench.serve_load import _load_main; _load_main()",
            str(output),
        ]
        if spec.cpus is not None:
            command = ["taskset", "-c", spec.cpus, *command]
        budget = min(spec.seconds, HARD_MAX_SECONDS) + spec.warmup_s + 60
        result = subprocess.run(
            command,
            input=spec.to_json(),
            capture_output=True,
            text=True,
            timeout=budget,
            check=False,
        )
        if result.returncode != 0 or not output.exists():
            raise StackError(
                f"the bench load client failed ({spec.kind} on port {spec.port}): "
                f"{result.stderr.strip()[-800:]}"
            )
        data = json.loads(output.read_text(encoding="utf-8"))
    return LoadResult(**data)


def _load_main() -> None:
    """Entry of the load client process: spec as JSON on stdin, result as JSON into the file
    named by the first argument (not stdout: the event loop may make stdout non-blocking)."""
    import uvloop  # noqa: PLC0415  # optional: the runtime's event-loop libraries, only for this benchmark

    spec = LoadSpec.from_json(sys.stdin.read())
    result = uvloop.run(_drive(spec))
    Path(sys.argv[1]).write_text(json.dumps(result.__dict__), encoding="utf-8")


async def _drive(spec: LoadSpec) -> LoadResult:
    seconds = min(spec.seconds, HARD_MAX_SECONDS)
    limit = min(spec.max_requests, HARD_MAX_REQUESTS)
    calls = await _callers(spec)
    latencies: list[float] = []
    errors: list[str] = []
    done_s: list[float] = []
    failed_s: list[float] = []
    loop = asyncio.get_running_loop()
    begin = loop.time()
    window_start = begin + spec.warmup_s
    window_end = window_start + seconds
    cpu_at_window: list[float] = []
    done = asyncio.Event()
    sent = 0

    async def client(call: Callable[[], Any]) -> None:
        nonlocal sent
        clock = time.perf_counter
        while not done.is_set():
            started = clock()
            try:
                ok = await call()
                failure = "" if ok is True else str(ok)
            except (OSError, grpc.RpcError) as exc:  # refused, reset, timed out, RPC status
                failure = f"{type(exc).__name__}: {exc}"[:300]
            sent += 1
            now = loop.time()
            if now >= window_end:
                done.set()
                return
            if now < window_start:
                continue
            if not cpu_at_window:
                cpu_at_window.append(time.process_time())
                cpu_at_window.append(now)
            if failure:
                errors.append(failure)
                failed_s.append(round(now - window_start, 4))
            else:
                latencies.append((clock() - started) * 1000)
                done_s.append(round(now - window_start, 4))
            if len(latencies) + len(errors) >= limit:
                done.set()
                return

    tasks = [asyncio.create_task(client(call)) for call in calls.callers]
    timeout = spec.warmup_s + seconds + 30
    finished, pending = await asyncio.wait(tasks, timeout=timeout)
    ended = loop.time()
    for task in pending:
        task.cancel()
    await calls.close()
    for task in finished:
        task.result()
    if cpu_at_window:
        window = max(ended - cpu_at_window[1], 1e-9)
        cpu = (time.process_time() - cpu_at_window[0]) / window
    else:
        window, cpu = 0.0, 0.0
    return LoadResult(
        requests=len(latencies),
        errors=len(errors),
        seconds=window,
        latencies_ms=latencies,
        client_cpu=cpu,
        first_error=errors[0] if errors else "",
        done_s=done_s,
        failed_s=failed_s,
        sent=sent,
    )


@dataclass
class _Callers:
    callers: list[Callable[[], Any]]
    close: Callable[[], Any]


async def _callers(spec: LoadSpec) -> _Callers:
    if spec.kind == "rest":
        return await _rest_callers(spec)
    if spec.kind == "grpc":
        return await _grpc_callers(spec)
    raise ValueError(f"unknown load kind {spec.kind!r}")


async def _rest_callers(spec: LoadSpec) -> _Callers:
    """Keep-alive HTTP/1.1 connections, one per client, responses parsed with httptools."""

    import httptools  # noqa: PLC0415  # optional: the runtime's event-loop libraries, only for this benchmark

    loop = asyncio.get_running_loop()
    request = (
        f"POST {spec.path} HTTP/1.1\r\nHost: {LOOPBACK}:{spec.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(spec.body)}\r\n\r\n"
    ).encode() + spec.body

    class Connection(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.waiter: asyncio.Future[Any] | None = None
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            status = self.parser.get_status_code()
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(True if status == 200 else f"HTTP {status}")

        def connection_lost(self, exc: Exception | None) -> None:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

        async def call(self) -> Any:
            self.waiter = loop.create_future()
            self.transport.write(request)
            return await self.waiter

    connections: list[Connection] = []

    def make_caller() -> Callable[[], Any]:
        state: dict[str, Connection | None] = {"connection": None}

        async def call() -> Any:
            connection = state["connection"]
            if connection is None or connection.transport.is_closing():
                _transport, connection = await loop.create_connection(
                    Connection, LOOPBACK, spec.port
                )
                connection.transport.get_extra_info("socket").setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                )
                state["connection"] = connection
                connections.append(connection)
            try:
                return await asyncio.wait_for(connection.call(), 60)
            except BaseException:
                connection.transport.close()
                state["connection"] = None
                raise

        return call

    async def close() -> None:
        for connection in connections:
            connection.transport.close()

    return _Callers([make_caller() for _ in range(spec.concurrency)], close)


async def _grpc_callers(spec: LoadSpec) -> _Callers:
    """One ``grpc.aio`` channel; requests are pre-serialized bytes (no client-side protobuf)."""

    channel = grpc.aio.insecure_channel(
        f"{LOOPBACK}:{spec.port}",
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    method = channel.unary_unary(PREDICT_METHOD)
    body = spec.body

    async def call() -> Any:
        await method(body, timeout=60)
        return True

    async def close() -> None:
        await channel.close()

    return _Callers([call] * spec.concurrency, close)
