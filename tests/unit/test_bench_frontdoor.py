"""bench frontdoor: the phases' specs and the #11/#12 verdict from measured figures (no Docker)."""

from __future__ import annotations

import tfstack.bench.runner
from tfstack.bench.frontdoor import Phase, frontdoor_rows, phase_spec
from tfstack.bench.serve_load import LoadResult


def result(p50_ms: float, requests: int, errors: int = 0) -> LoadResult:
    return LoadResult(requests, errors, 10.0, [p50_ms] * 11, 0.5)


def test_phase_spec_sets_replicas_and_forces_the_door_without_touching_the_rest() -> None:
    """Each phase changes serving.replicas and frontend.enabled only; the input is not mutated."""
    base = {"project": "p", "serving": {"rest_port": 1, "replicas": 3}, "frontend": {"retries": 2}}
    door = phase_spec(base, replicas=2, door=True)
    assert door["serving"] == {"rest_port": 1, "replicas": 2}
    assert door["frontend"] == {"retries": 2, "enabled": True}
    assert phase_spec(base, replicas=1, door=False)["frontend"]["enabled"] is False
    assert base["serving"]["replicas"] == 3 and "enabled" not in base["frontend"]


def test_verdict_needs_small_added_p50_throughput_ratio_scaling_and_no_errors() -> None:
    """Met only with added p50 <= 0.3 ms, door/direct >= 0.9x, 2/1 replicas >= 1.6x, 0 errors."""
    direct = Phase("direct", result(1.0, 100), result(1.0, 10_000))
    good = Phase("door1", result(1.2, 100), result(1.2, 9_500))
    scaled = Phase("door2", result(1.2, 100), result(1.2, 16_000))
    rows, met = frontdoor_rows(direct, good, scaled)
    assert met
    text = dict(rows)
    assert text["#11 added p50 through the door"].startswith("0.200 ms")
    assert text["#11 throughput door / direct"].startswith("0.95x")
    assert text["#12 throughput 2 replicas / 1"].startswith("1.68x")
    slow = Phase("door1", result(1.5, 100), result(1.5, 9_500))
    assert not frontdoor_rows(direct, slow, scaled)[1], "0.5 ms added"
    flat = Phase("door2", result(1.2, 100), result(1.2, 12_000))
    assert not frontdoor_rows(direct, good, flat)[1], "1.26x scaling"
    failing = Phase("door2", result(1.2, 100), result(1.2, 16_000, errors=1))
    assert not frontdoor_rows(direct, good, failing)[1], "an error"


def test_frontdoor_is_a_registered_benchmark() -> None:
    """`invoke bench` lists frontdoor."""
    assert "frontdoor" in tfstack.bench.runner.describe_benchmarks()
