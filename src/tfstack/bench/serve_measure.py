"""What ``bench serve`` measures on one server: idle RSS, half_plus_two load (one client at a time,
then many on one core), ResNet-50 one client at a time, first requests, and 32 concurrent ResNet-50
clients with batching off and on. Each phase starts its own server and stops it, even on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tfstack.bench.serve_load import LoadResult, LoadSpec, run_load
from tfstack.bench.serve_reference import SMALL_BODY, grpc_predict_bytes, resnet_rest_body
from tfstack.bench.serve_servers import BATCH_CLIENTS, Server, rss_mb, timed_post, wait_available
from tfstack.core.progress import Say

THROUGHPUT_CONNECTIONS = 16  # as the naive-Starlette reference of targets.md
GRPC_CONCURRENCY = 32
SEQUENTIAL_SMALL = 400
SEQUENTIAL_RESNET = 25
RESNET_WINDOW_S = 8.0
SMALL_MODELS = ("half_plus_two", "half_plus_three")
RESNET_MODELS = ("resnet",)

Starter = Callable[[Sequence[str], "str | None", bool], Server]
"""Starts a server for (models, cpus or None for all cores, batching)."""


@dataclass
class Figures:
    """What one server measured (None where not measured)."""

    name: str
    idle_rss_mb: float | None = None
    small_first_ms: float | None = None
    resnet_first_ms: float | None = None
    loads: dict[str, LoadResult] = field(default_factory=dict)


def _measure_small(server: Server, figures: Figures, window: float, say: Say) -> None:
    small_path = "/v1/models/half_plus_two:predict"
    status, _body, first = timed_post(server.rest_port, small_path, SMALL_BODY)
    figures.small_first_ms = first if status == 200 else None
    time.sleep(1.5)  # settle (warmup, startup garbage) before the idle footprint
    figures.idle_rss_mb = rss_mb(server.pids())
    say(f"{figures.name}: idle RSS {figures.idle_rss_mb:.0f} MB; half_plus_two loads")
    grpc_body = grpc_predict_bytes("half_plus_two", "x", [1.0, 2.0, 5.0], "float32")
    rest = LoadSpec("rest", server.rest_port, SMALL_BODY, small_path)
    grpc = LoadSpec("grpc", server.grpc_port, grpc_body)
    client_cpu = "1"
    runs = {
        "small_rest_seq": _replace(rest, seconds=10, warmup_s=0.3, max_requests=SEQUENTIAL_SMALL),
        "small_grpc_seq": _replace(grpc, seconds=10, warmup_s=0.3, max_requests=SEQUENTIAL_SMALL),
        "small_rest_load": _replace(
            rest, concurrency=THROUGHPUT_CONNECTIONS, seconds=window, cpus=client_cpu
        ),
        "small_grpc_load": _replace(
            grpc, concurrency=GRPC_CONCURRENCY, seconds=window, cpus=client_cpu
        ),
    }
    for key, spec in runs.items():
        figures.loads[key] = run_load(spec)


def _replace(spec: LoadSpec, **changes: Any) -> LoadSpec:
    return LoadSpec(**{**spec.__dict__, **changes})


def _measure_resnet(
    server: Server, figures: Figures, jpeg: bytes, say: Say, *, batching: bool
) -> None:
    path = "/v1/models/resnet:predict"
    rest_body = resnet_rest_body(jpeg)
    grpc_body = grpc_predict_bytes("resnet", "image_bytes", [jpeg], "string")
    mode = "on" if batching else "off"
    if not batching:
        status, _body, first = timed_post(server.rest_port, path, rest_body)
        figures.resnet_first_ms = first if status == 200 else None
        say(f"{figures.name}: ResNet-50 one client at a time")
        figures.loads["resnet_rest_seq"] = run_load(
            LoadSpec(
                "rest",
                server.rest_port,
                rest_body,
                path,
                seconds=20,
                warmup_s=0.5,
                max_requests=SEQUENTIAL_RESNET,
            )
        )
        figures.loads["resnet_grpc_seq"] = run_load(
            LoadSpec(
                "grpc",
                server.grpc_port,
                grpc_body,
                seconds=20,
                warmup_s=0.5,
                max_requests=SEQUENTIAL_RESNET,
            )
        )
    say(f"{figures.name}: {BATCH_CLIENTS} concurrent ResNet-50 clients, batching {mode}")
    figures.loads[f"resnet_batch_{mode}"] = run_load(
        LoadSpec(
            "grpc",
            server.grpc_port,
            grpc_body,
            concurrency=BATCH_CLIENTS,
            seconds=RESNET_WINDOW_S,
            warmup_s=3.0,
        )
    )


@contextmanager
def _running(
    starter: Starter, models: Sequence[str], cpus: str | None, batching: bool
) -> Iterator[Server]:
    server = starter(models, cpus, batching)
    try:
        wait_available(server, models)
        yield server
    finally:
        server.stop()


def measure_server(*, starter: Starter, name: str, jpeg: bytes, window: float, say: Say) -> Figures:
    """Every figure of one server (``starter`` starts it for each phase)."""
    figures = Figures(name)
    say(f"{name}: starting with {', '.join(SMALL_MODELS)} on one core")
    with _running(starter, SMALL_MODELS, "0", False) as server:
        figures.name = server.name.split(" (")[0]
        _measure_small(server, figures, window, say)
    say(f"{name}: starting with ResNet-50 (all cores, batching off)")
    with _running(starter, RESNET_MODELS, None, False) as server:
        _measure_resnet(server, figures, jpeg, say, batching=False)
    say(f"{name}: starting with ResNet-50 (batching on)")
    with _running(starter, RESNET_MODELS, None, True) as server:
        _measure_resnet(server, figures, jpeg, say, batching=True)
    return figures
