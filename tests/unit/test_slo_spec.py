"""models[].slo: the rollout gates in the spec, their schema and their semantic rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfstack.spec import SloSpec, load_spec

from .specfixtures import Project, only, valid_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path).with_models()


def test_slo_defaults_and_values(project: Project) -> None:
    """An slo block loads with the documented defaults for what it leaves out."""
    spec = valid_spec()
    spec["models"][0]["slo"] = {"error_rate": 0.02, "p99_ms": 50}
    loaded = load_spec(project.write(spec))
    slo = loaded.models[0].slo
    assert slo == SloSpec(
        error_rate=0.02,
        p99_ms=50,
        max_latency_ratio=1.5,
        min_requests=100,
        window_seconds=60,
        max_window_seconds=300,
        max_output_diff=None,
    )
    assert loaded.models[1].slo is None


def test_slo_schema_errors_name_the_yaml_path_and_line(project: Project) -> None:
    """An out-of-range gate is a schema error at models[i].slo.<key> with its line."""
    spec = valid_spec()
    spec["models"][1]["slo"] = {"error_rate": 1.5}
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[1].slo.error_rate"
    assert problem.line is not None
    text = project.spec.read_text(encoding="utf-8").splitlines()
    assert "error_rate" in text[problem.line - 1]


def test_slo_unknown_key_suggests_the_right_one(project: Project) -> None:
    """A misspelt gate is refused with a suggestion."""
    spec = valid_spec()
    spec["models"][0]["slo"] = {"p99ms": 50}
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[0].slo.p99ms"
    assert "p99_ms" in (problem.message + (problem.hint or ""))


def test_slo_window_that_cannot_grow(project: Project) -> None:
    """max_window_seconds below window_seconds is refused at that key, with a fix."""
    spec = valid_spec()
    spec["models"][0]["slo"] = {"window_seconds": 120, "max_window_seconds": 60}
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[0].slo.max_window_seconds"
    assert "shorter than window_seconds (120)" in problem.message
    assert problem.hint is not None and "at least 120" in problem.hint


def test_slo_without_any_gate(project: Project) -> None:
    """An slo whose gates are all null gates nothing and is refused."""
    spec = valid_spec()
    spec["models"][0]["slo"] = {"error_rate": None, "max_latency_ratio": None}
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[0].slo"
    assert problem.message.startswith("sets no gate")


def test_slo_needs_monitoring(project: Project) -> None:
    """Gates read the servers' metrics, so monitoring off with an slo is refused."""
    spec = valid_spec()
    spec["monitoring"]["enabled"] = False
    spec["models"][1]["slo"] = {"error_rate": 0.01}
    problem = only(project.problems(spec, check_disk=False))
    assert problem.yaml_path == "models[1].slo"
    assert "monitoring.enabled is false" in problem.message
