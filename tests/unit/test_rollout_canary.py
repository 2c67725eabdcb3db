"""Weighted canaries, the pure parts: --traffic, the plan, the abort plan, the canary container,
the door's runtime-API lines and the analysis loop (tfstack.rollout.canary and .plan)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tfstack.errors import UsageError
from tfstack.rollout.canary import (
    CONTAINER_CANARY_CONFIG,
    LABEL_CANARY_VERSION,
    analyze,
    canary_spec,
    check_traffic_prerequisites,
    parse_map,
    plan_canary,
    share_commands,
)
from tfstack.rollout.journal import Journal, ModelState, StepRecord
from tfstack.rollout.plan import Observed, RolloutRequest, parse_traffic, plan, plan_abort
from tfstack.serving.metrics import Histogram, ModelCounters, Scrape
from tfstack.spec import StackSpec
from tfstack.spec.slo import SloSpec

MODEL = "half_plus_two"


def observed() -> Observed:
    return Observed(MODEL, ModelState({"latest": 1}, {"stable": 1}), (1,), (1,))


# --------------------------------------------------------------------------- --traffic


def test_traffic_percentages_parse_in_order() -> None:
    assert parse_traffic("10, 50,100") == (10, 50, 100)
    assert parse_traffic("5") == (5,)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("50,10", "does not increase"),
        ("10,10", "does not increase"),
        ("0,50", "outside 1..100"),
        ("10,150", "outside 1..100"),
        ("ten", "not a whole percentage"),
        (" , ", "at least one"),
    ],
)
def test_bad_traffic_is_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as caught:
        parse_traffic(text)
    assert caught.value.exit_code == 2


def test_a_traffic_rollout_gates_every_step_before_load_and_removes_the_canary_after_promote() -> (
    None
):
    request = RolloutRequest(MODEL, version=2, source="/tmp/v2", traffic=(10, 50, 100))
    steps = plan(request, observed())
    assert [s.name for s in steps] == [
        "pin",
        "stage",
        "verify",
        "canary_start",
        "traffic_10",
        "traffic_50",
        "traffic_100",
        "load",
        "promote",
        "canary_stop",
    ]
    traffic = [s for s in steps if s.kind == "traffic"]
    assert [s.percent for s in traffic] == [10, 50, 100]
    assert all(s.version == 2 and s.compare_with == 1 for s in traffic)


def test_traffic_and_label_canary_do_not_mix() -> None:
    request = RolloutRequest(MODEL, version=2, source="/tmp/v2", traffic=(10,), canary=True)
    with pytest.raises(UsageError, match="pick one"):
        plan(request, observed())


def test_a_breach_at_the_first_step_aborts_canary_first_then_version_then_spec() -> None:
    request = RolloutRequest(MODEL, version=2, source="/tmp/v2", traffic=(10, 100))
    steps = plan(request, observed())
    journal = Journal(
        project="p",
        model=MODEL,
        action="rollout",
        version=2,
        original=observed().spec_state,
        original_spec_text="spec",
        original_served=(1,),
        previous_stable=1,
        steps=[StepRecord(s) for s in steps],
        created_version_dir=True,
    )
    for record in journal.steps[:4]:
        record.status = "done"
    journal.steps[4].status = "failed"  # traffic_10
    assert [s.name for s in plan_abort(journal)] == ["canary_stop", "remove_version", "restore"]


def test_the_abort_stops_the_canary_unless_its_stop_is_done() -> None:
    request = RolloutRequest(MODEL, version=2, source="/tmp/v2", traffic=(100,))
    steps = plan(request, observed())
    assert steps[-1].name == "canary_stop"
    journal = Journal("p", MODEL, "rollout", 2, observed().spec_state, "s", (1,), 1, [])
    journal.steps = [StepRecord(s, status="done") for s in steps]
    journal.steps[-1].status = "failed"
    assert next(s.name for s in plan_abort(journal)) == "canary_stop"
    journal.steps[-1].status = "done"
    assert "canary_stop" not in [s.name for s in plan_abort(journal)]


# --------------------------------------------------------------------------- prerequisites


def spec_with(extra: str = "", slo: bool = True, monitoring: bool = True) -> StackSpec:
    text = f"""
format: 1
project: demo
models:
  - name: {MODEL}
    {"slo: {min_requests: 5}" if slo else ""}
serving:
  replicas: 2
monitoring:
  enabled: {"true" if monitoring else "false"}
{extra}
"""
    return StackSpec.model_validate(yaml.safe_load(text))


def test_traffic_needs_gates_a_door_and_metrics() -> None:
    assert check_traffic_prerequisites(spec_with(), MODEL, door_on=True).min_requests == 5
    with pytest.raises(UsageError, match="has no slo"):
        check_traffic_prerequisites(spec_with(slo=False), MODEL, door_on=True)
    with pytest.raises(UsageError, match="needs the front door"):
        check_traffic_prerequisites(spec_with(), MODEL, door_on=False)
    with pytest.raises(UsageError, match=r"monitoring\.enabled"):
        check_traffic_prerequisites(spec_with(monitoring=False), MODEL, door_on=True)


def test_the_canary_serves_the_candidate_only_and_other_models_unchanged() -> None:
    spec = spec_with()
    changed = canary_spec(spec, MODEL, 7)
    (model,) = changed.models
    assert model.policy.model_dump() == {"specific": [7]}
    assert model.labels == {}
    assert spec.models[0].labels == {}  # the original is untouched (frozen copy)


# --------------------------------------------------------------------------- the container


def replica_attrs() -> dict[str, object]:
    return {
        "Name": "/demo-serving-1",
        "Config": {
            "Image": "tfstack/serving-runtime:latest",
            "Cmd": ["--port=8500", "--model_config_file=/config/models.config", "--x=1"],
            "Entrypoint": ["tensorflow_model_server"],
            "User": "1000:1000",
            "Env": ["MALLOC_ARENA_MAX=2"],
        },
        "HostConfig": {
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "NanoCpus": 1_000_000_000,
            "Memory": 0,
            "Mounts": [{"Type": "bind", "Source": "/p/config", "Target": "/config"}],
        },
        "NetworkSettings": {"Networks": {"demo_default": {"IPAddress": "172.18.0.3"}}},
    }


def test_the_canary_is_a_hardened_clone_of_a_replica_reading_its_own_config() -> None:
    plan_ = plan_canary(replica_attrs(), project="demo", model=MODEL, version=7)
    assert plan_.name == "demo-canary"
    assert plan_.command == (
        "--port=8500",
        f"--model_config_file={CONTAINER_CANARY_CONFIG}",
        "--x=1",
    )
    assert plan_.network == "demo_default"
    assert plan_.user == "1000:1000"
    assert plan_.host_config["ReadonlyRootfs"] is True
    assert plan_.host_config["CapDrop"] == ["ALL"]
    assert "Memory" not in plan_.host_config  # unset limits are not copied as 0
    assert plan_.labels[LABEL_CANARY_VERSION] == "7"
    assert plan_.labels["org.tfstack.role"] == "canary"


def test_a_replica_on_no_network_cannot_be_cloned() -> None:
    attrs = replica_attrs()
    attrs["NetworkSettings"] = {"Networks": {}}
    with pytest.raises(Exception, match="on no network"):
        plan_canary(attrs, project="demo", model=MODEL, version=7)


# --------------------------------------------------------------------------- the door


def test_share_lines_replace_the_entry_and_read_the_map_back() -> None:
    assert share_commands("/m", MODEL, 10) == (
        f"del map /m {MODEL}; add map /m {MODEL} 10; show map /m"
    )
    assert share_commands("/m", MODEL, 0) == f"del map /m {MODEL}; show map /m"
    with pytest.raises(ValueError, match="outside"):
        share_commands("/m", MODEL, 101)


def test_the_map_answer_parses() -> None:
    answer = "\n\n0x55d0c8a0 half_plus_two 50\n0x55d0c8b0 other 5\n\n"
    assert parse_map(answer) == {MODEL: 50, "other": 5}


# --------------------------------------------------------------------------- analysis


def scrape_of(requests: float, errors: float, slow: bool, at: float) -> Scrape:
    bounds = (1000.0, 100_000.0, float("inf"))  # microseconds
    cells = (0.0, requests, requests) if slow else (requests, requests, requests)
    histogram = Histogram(bounds, cells, 0.0)
    status = {"OK": requests - errors, "INVALID_ARGUMENT": errors}
    return Scrape("t", at, {MODEL: ModelCounters(status, histogram)})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_analysis(candidate: Sequence[tuple[float, float, bool]], slo: SloSpec) -> object:
    """Windows of 5 s; ``candidate``: cumulative (requests, errors, slow) per scrape."""
    clock = Clock()
    calls = {"candidate": 0, "stable": 0}

    def read(urls: Sequence[str], at: float) -> list[Scrape]:
        kind = "candidate" if urls[0].startswith("c") else "stable"
        index = calls[kind]
        calls[kind] += 1
        if kind == "candidate":
            requests, errors, slow = candidate[min(index, len(candidate) - 1)]
            return [scrape_of(requests, errors, slow, at)]
        return [scrape_of(100.0 * index, 0, False, at), scrape_of(100.0 * index, 0, False, at)]

    return analyze(
        slo,
        MODEL,
        10,
        candidate_urls=["c"],
        stable_urls=["s1", "s2"],
        window_s=5,
        max_window_s=15,
        clock=clock,
        sleep=clock.sleep,
        read=read,
    )


def test_a_healthy_candidate_passes_one_window() -> None:
    analysis = run_analysis([(0, 0, False), (50, 0, False)], SloSpec(min_requests=20))
    assert analysis.final.outcome == "pass"  # type: ignore[attr-defined]
    assert "10%: pass" in analysis.summary()  # type: ignore[attr-defined]


def test_a_slow_candidate_breaches_the_latency_ratio() -> None:
    analysis = run_analysis([(0, 0, True), (50, 0, True)], SloSpec(min_requests=20))
    final = analysis.final  # type: ignore[attr-defined]
    assert final.outcome == "breach"
    assert [g.gate for g in final.failed] == ["max_latency_ratio"]


def test_quiet_windows_extend_then_stop_without_promoting() -> None:
    analysis = run_analysis([(0, 0, False), (5, 0, False), (8, 0, False)], SloSpec())
    outcomes = [d.outcome for d in analysis.decisions]  # type: ignore[attr-defined]
    assert outcomes == ["extend", "extend", "stop"]


def test_errors_breach_before_min_requests() -> None:
    analysis = run_analysis([(0, 0, False), (10, 3, False)], SloSpec(min_requests=100))
    assert analysis.final.outcome == "breach"  # type: ignore[attr-defined]


def test_the_canary_config_path_sits_under_the_mounted_config_dir() -> None:
    assert Path(CONTAINER_CANARY_CONFIG).parent.as_posix() == "/config/canary"


def test_the_journal_tells_status_and_top_the_current_split() -> None:
    request = RolloutRequest(MODEL, version=2, source="/tmp/v2", traffic=(10, 50))
    steps = plan(request, observed())
    journal = Journal("p", MODEL, "rollout", 2, observed().spec_state, "s", (1,), 1, [])
    journal.steps = [StepRecord(s) for s in steps]
    assert journal.summary()["traffic"] is None
    for record in journal.steps[:5]:
        record.status = "done"  # ... canary_start, traffic_10
    journal.steps[5].status = "running"  # traffic_50
    assert journal.summary()["traffic"] == {"version": 2, "percent": 50}
    journal.record("canary_stop").status = "running"  # type: ignore[union-attr]
    assert journal.summary()["traffic"] is None
    journal.record("canary_stop").status = "pending"  # type: ignore[union-attr]
    journal.status = "failed"
    assert journal.summary()["traffic"] is None
