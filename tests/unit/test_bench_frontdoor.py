"""bench frontdoor: the phases' specs, CPU layouts, the #11/#12 verdict and the charts' data from
measured figures (no Docker)."""

from __future__ import annotations

import math
from pathlib import Path

import tfstack.bench.runner
from tfstack.bench.frontdoor import (
    DOOR_THREADS,
    LAYOUTS,
    Phase,
    chart_series,
    frontdoor_rows,
    phase_spec,
    verdict,
    write_charts,
)
from tfstack.bench.serve_load import LoadResult


def result(p50_ms: float, requests: int, errors: int = 0, cpu: float = 0.5) -> LoadResult:
    done = [i * 10.0 / requests for i in range(requests)]
    return LoadResult(requests, errors, 10.0, [p50_ms] * 11, cpu, done_s=done)


def phase(
    name: str,
    p50: tuple[float, float],
    rps: tuple[int, int],
    *,
    errors: int = 0,
    capped: int | None = None,
    cpu: float = 0.5,
) -> Phase:
    """A phase with REST/gRPC p50 (ms) and REST/gRPC requests in a 10 s window."""
    return Phase(
        name,
        {"rest": result(p50[0], 100), "grpc": result(p50[1], 100)},
        {"rest": result(p50[0], rps[0], errors, cpu), "grpc": result(p50[1], rps[1], 0, cpu)},
        {"rest": 40.0, "grpc": 55.0},
        None if capped is None else result(p50[0], capped),
        {"rest": 300.0, "grpc": 350.0},
    )


DIRECT = phase("direct, 1 replica", (1.0, 1.5), (10_000, 8_000))
DOOR1 = phase("door, 1 replica", (1.2, 1.7), (9_500, 7_600), capped=5_000)
DOOR2 = phase("door, 2 replicas", (1.2, 1.7), (16_000, 13_000), capped=9_500)


def test_phase_spec_sets_replicas_and_forces_the_door_without_touching_the_rest() -> None:
    """Each phase changes serving.replicas and frontend.enabled (plus the door's threads)
    only; the input is not mutated."""
    base = {"project": "p", "serving": {"rest_port": 1, "replicas": 3}, "frontend": {"retries": 2}}
    door = phase_spec(base, replicas=2, door=True)
    assert door["serving"] == {"rest_port": 1, "replicas": 2}
    assert door["frontend"] == {"retries": 2, "enabled": True, "threads": DOOR_THREADS}
    assert phase_spec(base, replicas=1, door=False)["frontend"] == {"retries": 2, "enabled": False}
    assert base["serving"]["replicas"] == 3 and "enabled" not in base["frontend"]


def test_layouts_give_each_replica_its_own_core_and_the_direct_client_the_other() -> None:
    """Replica 1 has core 0 alone in the one-replica phases (client and door on core 1); with
    two replicas each has its own core."""
    direct, door1, door2 = LAYOUTS.values()
    assert (direct.replicas, direct.client) == (("0",), "1")
    assert (door1.replicas, door1.door, door1.client) == (("0",), "1", "1")
    assert door2.replicas == ("0", "1")
    assert "replica 2 on CPU 1" in door2.describe()


def test_verdict_needs_small_added_p50_throughput_ratio_scaling_and_no_errors() -> None:
    """Met only with added p50 <= 0.3 ms, door/direct >= 0.9x, 2/1 replicas >= 1.6x for REST
    and gRPC, and 0 errors; the capped scaling is a diagnostic, not part of the verdict."""
    rows, met = frontdoor_rows(DIRECT, DOOR1, DOOR2)
    assert met
    text = dict(rows)
    assert text["#11 REST added p50 through the door"].startswith("0.200 ms")
    assert text["#11 gRPC throughput door / direct"].startswith("0.95x")
    assert text["#12 REST throughput 2 replicas / 1 (pinned)"].startswith("1.68x")
    assert text["#12 gRPC throughput 2 replicas / 1 (pinned)"].startswith("1.71x")
    assert text["door CPU per REST request (1 / 2 replicas)"] == "40 / 40 us"
    assert text["REST 2 replicas / 1, each capped at 0.5 core (diagnostic)"].startswith("1.90x")
    assert verdict(DIRECT, DOOR1, DOOR2).capped_scale == 1.9
    # CPU per request through the door: replica 300 + door 40 + client 0.5 core * 10 s / 9,500.
    assert text["REST CPU per request via the door: replica + door + client"].startswith(
        "300 + 40 + 526 = 866 us"
    )
    ceiling = verdict(DIRECT, DOOR1, DOOR2).ceiling["rest"]
    assert math.isclose(ceiling, 2e6 / (300 + 40 + 0.5 * 10 * 1e6 / 9_500) / 950)
    assert text["#12 REST ceiling on 2 cores from that CPU"].startswith(f"{ceiling:.2f}x")
    slow = phase("door, 1 replica", (1.2, 2.0), (9_500, 7_600))
    assert not frontdoor_rows(DIRECT, slow, DOOR2)[1], "gRPC 0.5 ms added"
    flat = phase("door, 2 replicas", (1.2, 1.7), (12_000, 13_000))
    assert not frontdoor_rows(DIRECT, DOOR1, flat)[1], "REST 1.26x scaling"
    failing = phase("door, 2 replicas", (1.2, 1.7), (16_000, 13_000), errors=1)
    assert not frontdoor_rows(DIRECT, DOOR1, failing)[1], "an error"
    assert dict(frontdoor_rows(DIRECT, DOOR1, failing)[0])["errors (all phases)"] == "1"


def test_a_busy_load_client_is_flagged() -> None:
    """A client near a full core may be the bottleneck: the row says so."""
    busy = phase("door, 2 replicas", (1.2, 1.7), (16_000, 13_000), cpu=0.97)
    assert verdict(DIRECT, DOOR1, busy).client_bound
    assert (
        "may limit"
        in dict(frontdoor_rows(DIRECT, DOOR1, busy)[0])["load client CPU, most in one run"]
    )
    assert not verdict(DIRECT, DOOR1, DOOR2).client_bound


def test_chart_series_compare_direct_and_door_latency_and_every_loaded_run() -> None:
    """The latency chart: one-client runs direct vs door (seconds); the throughput chart: the
    loaded runs of all three phases."""
    latencies, loads = chart_series(DIRECT, DOOR1, DOOR2)
    assert list(latencies) == [
        "REST direct, 1 replica",
        "REST door, 1 replica",
        "gRPC direct, 1 replica",
        "gRPC door, 1 replica",
    ]
    assert math.isclose(latencies["REST door, 1 replica"][0], 0.0012)
    assert len(loads) == 6 and loads["gRPC door, 2 replicas"] is DOOR2.loaded["grpc"]


def test_write_charts_names_two_pngs(tmp_path: Path) -> None:
    """Both charts are written under fixed names."""
    paths = write_charts(DIRECT, DOOR1, DOOR2, tmp_path)
    assert [p.name for p in paths] == ["frontdoor-latency.png", "frontdoor-throughput.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_frontdoor_is_a_registered_benchmark() -> None:
    """`invoke bench` lists frontdoor."""
    assert "frontdoor" in tfstack.bench.runner.describe_benchmarks()


def test_no_cpu_figures_means_no_ceiling() -> None:
    """Without the engine's CPU counters the ceiling is NaN, not a made-up number."""
    bare = Phase("door, 1 replica", DOOR1.sequential, DOOR1.loaded)
    assert math.isnan(verdict(DIRECT, bare, DOOR2).ceiling["grpc"])
    assert (
        "nan"
        in dict(frontdoor_rows(DIRECT, bare, DOOR2)[0])["#12 gRPC ceiling on 2 cores from that CPU"]
    )
