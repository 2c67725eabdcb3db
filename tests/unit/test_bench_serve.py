"""bench serve's pure parts: the targets table, the duration formatter, the load client's
accounting and the container server's wiring onto tfstack.docker.containers."""

from __future__ import annotations

import asyncio
import math
import socket
from pathlib import Path
from typing import Any

import pytest

from tfstack.bench import serve_servers
from tfstack.bench.loadgen import format_ms
from tfstack.bench.serve import chart_runs, write_charts
from tfstack.bench.serve_load import LoadResult, LoadSpec, _drive
from tfstack.bench.serve_measure import Figures
from tfstack.bench.serve_reference import Reference
from tfstack.bench.serve_servers import BATCHING_PARAMETERS, start_container
from tfstack.bench.serve_targets import build_rows, serve_targets
from tfstack.docker.containers import BATCHING_CONFIG_PATH, GRPC_PORT, REST_PORT, ServingContainer

SMALL = Reference(first_ms=30.0, latencies_ms=[0.4, 0.5, 0.6])
RESNET = Reference(first_ms=35.0, latencies_ms=[20.0, 21.0])
BATCH = Reference(first_ms=300.0, latencies_ms=[250.0])
LOAD_KEYS = (
    "small_rest_load",
    "small_grpc_load",
    "small_rest_seq",
    "small_grpc_seq",
    "resnet_rest_seq",
    "resnet_grpc_seq",
    "resnet_batch_off",
    "resnet_batch_on",
)


def result(rps: float, p_ms: float, *, errors: int = 0, cpu: float = 0.5, error: str = "") -> Any:
    return LoadResult(
        requests=int(rps),
        errors=errors,
        seconds=1.0,
        latencies_ms=[p_ms] * 100,
        client_cpu=cpu,
        first_error=error,
    )


def good_figures() -> Figures:
    figures = Figures("srv", idle_rss_mb=500.0, small_first_ms=0.6, resnet_first_ms=22.0)
    figures.loads = {
        "small_rest_load": result(4000, 5.0),
        "small_grpc_load": result(3000, 10.0, cpu=0.95),
        "small_rest_seq": result(900, 0.5),
        "small_grpc_seq": result(800, 0.6),
        "resnet_rest_seq": result(40, 21.0),
        "resnet_grpc_seq": result(45, 20.0),
        "resnet_batch_off": result(40, 800.0),
        "resnet_batch_on": result(60, 300.0),
    }
    return figures


def test_the_table_lists_every_target_in_order_with_its_goal_and_reference() -> None:
    """One row per target of targets.md, in the printed order, each with its goal and reference."""
    names = [target.name.split(" ")[0] for target in serve_targets(SMALL, RESNET, BATCH)]
    context = "half_plus_two"
    assert names == ["#1", "#3", context, context, "#2", "#2", "#5", "#5", "#9", "#8"]
    rows = build_rows([good_figures()], SMALL, RESNET, BATCH)
    assert rows[0].target == ">= 3,000 req/s, p99 <= 10 ms, 0 errors"
    assert rows[0].reference == "in-process call p50 0.50 ms on one core (at most 2,000 calls/s)"
    assert rows[8].reference.endswith(
        "bound = 5 ms timeout + that = 255.00 ms (met: p99 <= 1.3x bound)"
    )


def test_good_figures_meet_every_target_and_context_rows_have_no_verdict() -> None:
    """Figures within every goal are met; the two context rows carry no verdict."""
    rows = build_rows([good_figures()], SMALL, RESNET, BATCH)
    verdicts = [row.met[0] for row in rows]
    assert verdicts[2:4] == [None, None]
    assert verdicts[:2] + verdicts[4:] == [True] * 8
    assert rows[0].values[0] == "4,000 req/s, p50 5.00 ms, p99 5.00 ms, 0 errors, client 0.50 cores"
    assert rows[1].values[0].endswith("client 0.95 cores (client-bound?)")
    assert rows[4].values[0] == "p50 21.00 ms, p99 21.00 ms = 1.02x in-process (0 errors)"
    assert rows[6].values[0] == "first 22.00 ms vs warm p50 21.00 ms = 1.05x"
    assert rows[9].values[0] == "500 MB"


def test_figures_outside_a_goal_are_missed() -> None:
    """Too slow, an error, too much memory or too little batching gain each miss their target."""
    figures = good_figures()
    figures.loads["small_rest_load"] = result(4000, 11.0)
    figures.loads["resnet_grpc_seq"] = result(45, 20.0, errors=1, error="E" * 200)
    figures.loads["resnet_batch_on"] = result(41, 300.0)
    figures.idle_rss_mb = 600.0
    rows = build_rows([figures], SMALL, RESNET, BATCH)
    assert [rows[i].met[0] for i in (0, 5, 8, 9)] == [False, False, False, False]
    assert rows[5].values[0].endswith(f"(1 errors); first error: {'E' * 80}")


def test_missing_figures_read_n_a_without_a_verdict_per_server() -> None:
    """A server that measured nothing shows n/a and no verdict, beside one that measured all."""
    rows = build_rows([good_figures(), Figures("empty")], SMALL, RESNET, BATCH)
    for row in rows:
        assert row.values[1] == "n/a"
        assert row.met[1] is None
        assert row.values[0] != "n/a"


def test_format_ms_has_one_way_to_say_no_value() -> None:
    """Milliseconds with the asked decimals; None and NaN read n/a."""
    assert format_ms(12.345) == "12.3 ms"
    assert format_ms(12.345, 2) == "12.35 ms"
    assert format_ms(1234.5, 0) == "1234 ms"
    assert format_ms(None) == "n/a"
    assert format_ms(math.nan, 2) == "n/a"


def test_load_spec_travels_to_the_client_process_as_json() -> None:
    """The spec (bytes body included) survives the JSON hop to the load client process."""
    spec = LoadSpec("grpc", 8500, b"\x00\xffbody", concurrency=3, cpus="1")
    assert LoadSpec.from_json(spec.to_json()) == spec


def test_refused_connections_are_counted_as_errors_with_the_first_one() -> None:
    """A server that refuses connections yields errors (not a crash), bounded by max_requests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])  # closed again before the load starts
    spec = LoadSpec("rest", port, b"{}", "/v1/models/m:predict", seconds=2.0, warmup_s=0.0)
    spec = LoadSpec(**{**spec.__dict__, "max_requests": 20})
    outcome = asyncio.run(_drive(spec))
    assert outcome.requests == 0
    assert 20 <= outcome.errors <= 21
    assert outcome.first_error.startswith("ConnectionRefusedError")
    # Every failure has its time for the charts, in order, inside the window.
    assert len(outcome.failed_s) == outcome.errors and outcome.done_s == []
    assert outcome.failed_s == sorted(outcome.failed_s) and 0 <= outcome.failed_s[0] < 2.0
    assert outcome.sent == outcome.errors


def test_the_container_server_is_a_labelled_serving_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image is benched in a ServingContainer: bench label, cpuset, batching file, its ports."""
    for name in ("half_plus_two", "half_plus_three"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"")
    started: list[ServingContainer] = []

    def fake_start(self: ServingContainer) -> ServingContainer:
        started.append(self)
        return self

    ports = {REST_PORT: 18501, GRPC_PORT: 18500}
    monkeypatch.setattr(ServingContainer, "start", fake_start)
    monkeypatch.setattr(ServingContainer, "host_port", lambda self, port: ports[port])
    server = start_container(
        "img:1", tmp_path, ["half_plus_two", "half_plus_three"], cpus="0", batching=True
    )
    (container,) = started
    assert (server.name, server.rest_port, server.grpc_port) == ("img:1 (one core)", 18501, 18500)
    assert container.plan.labels["org.tfstack.bench"] == "serve"
    assert container.plan.files[BATCHING_CONFIG_PATH] == BATCHING_PARAMETERS
    assert set(container.plan.expected) == {"half_plus_two", "half_plus_three"}
    assert container._kwargs["cpuset_cpus"] == "0"
    assert container._kwargs["security_opt"] == ["no-new-privileges"]
    assert serve_servers.BENCH_LABELS == {"org.tfstack.bench": "serve"}


def test_serve_charts_draw_each_servers_runs(tmp_path: Path) -> None:
    """The latency chart draws half_plus_two's four runs, the ResNet chart the four ResNet runs,
    the throughput chart the loaded runs; with two servers each name carries its server."""
    one = good_figures()
    assert list(chart_runs([one], "latency")) == [
        "REST one client",
        "gRPC one client",
        "REST 16 connections",
        "gRPC 32 calls",
    ]
    assert chart_runs([one], "throughput")["ResNet-50 batching on"] is one.loads["resnet_batch_on"]
    other = good_figures()
    other.name = "img:2"
    del other.loads["resnet_batch_on"]
    both = chart_runs([one, other], "resnet-latency")
    assert len(both) == 7 and "img:2: REST one client" in both
    paths = write_charts([one], tmp_path)
    assert [p.name for p in paths] == [
        "serve-latency.png",
        "serve-resnet-latency.png",
        "serve-throughput.png",
    ]
