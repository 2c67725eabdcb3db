"""deploy.swarm and deploy.target swarm: schema, target-specific checks with lines, --target."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.specfixtures import Project, only, valid_spec
from tfstack.errors import UsageError
from tfstack.spec.deploy import LOCAL_PUSH_REGISTRY, LOCAL_REGISTRY, SwarmTarget
from tfstack.spec.load import check_spec, deploy_target, load_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A throw-away project with the fixture's model versions on disk."""
    return Project(tmp_path).with_models()


def test_swarm_defaults_are_the_local_cluster() -> None:
    """Defaults: dnsrr, the local registry pushed through 127.0.0.1, door on a manager."""
    target = SwarmTarget()
    assert target.endpoint_mode == "dnsrr"
    assert target.registry == LOCAL_REGISTRY
    assert target.push_to() == LOCAL_PUSH_REGISTRY
    assert SwarmTarget(registry="reg.example:5000").push_to() == "reg.example:5000"
    assert SwarmTarget(registry="a:1", push_registry="b:2").push_to() == "b:2"


def test_swarm_target_loads_and_is_chosen(project: Project) -> None:
    """deploy.target: swarm loads; deploy_target answers swarm, and --target swarm overrides."""
    data = valid_spec()
    data["deploy"] = {
        "target": "swarm",
        "swarm": {"endpoint_mode": "vip", "max_replicas_per_node": 2},
    }
    project.write(data)
    spec = load_spec(project.spec)
    assert spec.deploy.swarm.endpoint_mode == "vip"
    assert deploy_target(project.spec) == "swarm"
    data["deploy"] = {"target": "compose"}
    project.write(data)
    assert deploy_target(project.spec, "swarm") == "swarm"
    with pytest.raises(UsageError, match="swarm"):
        deploy_target(project.spec, "nomad")


def test_bad_swarm_field_names_its_yaml_path_and_line(project: Project) -> None:
    """An unknown endpoint mode is reported at deploy.swarm.endpoint_mode with its line."""
    data = valid_spec()
    data["deploy"] = {"swarm": {"endpoint_mode": "ipvs"}}
    problem = only(project.problems(data))
    assert problem.yaml_path == "deploy.swarm.endpoint_mode"
    assert problem.line is not None and problem.line > 1


def test_swarm_rules_apply_only_to_the_swarm_target(project: Project) -> None:
    """A bad constraint and a disabled door are problems for swarm (with lines), not compose."""
    data = valid_spec()
    data["frontend"] = {"enabled": False}
    data["deploy"] = {"swarm": {"constraints": ["node.role==manager", "rack = 3"]}}
    project.write(data)
    assert check_spec(project.spec).problems == []
    problems = check_spec(project.spec, target="swarm").problems
    paths = sorted(p.yaml_path for p in problems)
    assert paths == ["deploy.swarm.constraints[1]", "frontend.enabled"]
    assert all(p.line is not None for p in problems)
