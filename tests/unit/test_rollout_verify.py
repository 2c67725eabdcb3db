"""Unit tests for the side instance's pure parts: its config, latency and sample verdicts."""

from __future__ import annotations

from pathlib import Path

from tfstack.core import textproto
from tfstack.rollout.verify import (
    LABEL_ROLE,
    compare_latency,
    error_lines,
    plan_side_instance,
    sample_problem,
)
from tfstack.spec import SampleRequest, StackSpec


def spec() -> StackSpec:
    return StackSpec.model_validate(
        {
            "project": "demo",
            "models": [{"name": "m"}],
            "serving": {"image": "img:1", "user": "1000:1000", "resources": {"cpus": 1.5}},
        }
    )


def test_side_instance_serves_only_stable_and_candidate_of_one_model() -> None:
    """The side config pins [stable, candidate] of the one model and parses as TF Serving's
    ModelServerConfig; the container is labelled as a verifier of the project."""
    plan = plan_side_instance(spec(), Path("/host/models/m"), "m", stable=1, candidate=2)
    message = textproto.parse(plan.config_text(), textproto.model_server_config())
    configs = message.model_config_list.config  # type: ignore[attr-defined]
    assert [c.name for c in configs] == ["m"]
    assert list(configs[0].model_version_policy.specific.versions) == [1, 2]
    assert configs[0].base_path == "/models/m"
    assert not configs[0].version_labels
    assert plan.labels[LABEL_ROLE] == "verifier"
    assert plan.labels["org.tfstack.project"] == "demo"
    assert "--max_num_load_retries=0" in plan.command
    assert plan.image == "img:1" and plan.cpus == 1.5


def test_latency_within_the_factor_passes_and_beyond_fails() -> None:
    """Candidate median <= factor x stable median passes; more fails."""
    assert compare_latency([0.010] * 5, [0.019] * 5, 2.0).ok
    verdict = compare_latency([0.010] * 5, [0.031] * 5, 2.0)
    assert not verdict.ok
    assert "3.10x" in verdict.describe()


def test_tiny_latency_differences_are_noise() -> None:
    """Sub-millisecond models: a difference under the floor passes even above the factor."""
    assert compare_latency([0.0005] * 5, [0.003] * 5, 2.0).ok


def test_sample_expectations_use_the_tolerance() -> None:
    """expect is compared within tolerance; no expect means any answer is fine."""
    sample = SampleRequest(body={"instances": [1.0]}, expect={"predictions": [2.5]}, tolerance=0.01)
    assert sample_problem(sample, {"predictions": [2.505]}) is None
    problem = sample_problem(sample, {"predictions": [3.5]})
    assert problem is not None and "3.5" in problem
    assert sample_problem(SampleRequest(body={"instances": [1.0]}), {"x": 1}) is None


def test_error_lines_pick_the_lines_that_explain_a_failure() -> None:
    """Log evidence favours error lines, bounded."""
    lines = ["starting", "Loading servable", "E Loading failed: DATA_LOSS", "bye"]
    assert error_lines(lines) == ["E Loading failed: DATA_LOSS"]
    assert error_lines(["a", "b"]) == ["a", "b"]
