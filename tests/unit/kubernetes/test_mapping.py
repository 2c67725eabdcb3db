"""Specs that cannot map onto Kubernetes are refused with file, line and YAML path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.kubernetes.variants import MODEL_IMAGE, SERVING_IMAGE, scaled_data
from tfstack.errors import SpecError
from tfstack.kubernetes import (
    KubernetesTarget,
    check_kubernetes_mapping,
    parse_kubernetes_target,
    plan_kubernetes,
    to_spec_problems,
)
from tfstack.spec import StackSpec, read_yaml

PINNED = KubernetesTarget(serving_image=SERVING_IMAGE, model_image=MODEL_IMAGE)


def _paths(data: dict[str, Any], target: KubernetesTarget = PINNED) -> list[str]:
    spec = StackSpec.model_validate(data)
    return [problem.yaml_path for problem in check_kubernetes_mapping(spec, target)]


def test_a_mappable_spec_has_no_problems() -> None:
    """The scaled variant's spec with a pinned image and a model image maps cleanly."""
    assert _paths(scaled_data()) == []


def test_host_path_repository_needs_a_model_image_or_claim() -> None:
    """Without model image or PVC the pods cannot see the host's model repository."""
    target = KubernetesTarget(serving_image=SERVING_IMAGE)
    assert _paths(scaled_data(), target) == ["deploy.kubernetes.model_image"]


def test_port_clash_is_reported_at_rest_port() -> None:
    """gRPC and REST on one port cannot both listen in a pod."""
    data = scaled_data()
    data["serving"] |= {"grpc_port": 9000, "rest_port": 9000}
    assert _paths(data) == ["serving.rest_port"]


def test_port_flags_in_extra_flags_are_refused() -> None:
    """An extra --rest_api_port would leave Service and probes pointing at the wrong port."""
    data = scaled_data()
    data["serving"]["extra_flags"] = ["--enable_grpc_healthcheck_service=true", "--rest_api_port=9"]
    assert _paths(data) == ["serving.extra_flags[1]"]


@pytest.mark.parametrize("image", ["tfstack/serving-runtime:latest", "tfstack/serving-runtime"])
def test_unpinned_server_image_is_refused(image: str) -> None:
    """:latest or no tag never reaches a cluster; the error points at serving.image."""
    data = scaled_data()
    data["serving"]["image"] = image
    assert _paths(data, KubernetesTarget(model_image=MODEL_IMAGE)) == ["serving.image"]


def test_unpinned_model_image_is_refused() -> None:
    """The model image must be pinned as well."""
    target = KubernetesTarget(serving_image=SERVING_IMAGE, model_image="models:latest")
    assert _paths(scaled_data(), target) == ["deploy.kubernetes.model_image"]


@pytest.mark.parametrize("user", ["0:0", "modelserver"])
def test_root_or_named_user_is_refused(user: str) -> None:
    """runAsNonRoot needs a numeric, non-zero uid."""
    data = scaled_data()
    data["serving"]["user"] = user
    assert _paths(data) == ["serving.user"]


def test_missing_resources_are_refused() -> None:
    """Requests and limits come from serving.resources, so both must be set."""
    data = scaled_data()
    del data["serving"]["resources"]
    assert _paths(data) == ["serving.resources.cpus", "serving.resources.memory"]


def test_project_that_is_no_dns_label_needs_a_name_and_namespace() -> None:
    """A project with '_' cannot name objects or a namespace unless the target gives them."""
    data = scaled_data()
    data["project"] = "team_a"
    assert _paths(data) == ["project", "project"]
    named = PINNED.model_copy(update={"name": "team-a", "namespace": "team-a"})
    assert _paths(data, named) == []


def test_autoscaling_maximum_below_minimum_is_refused() -> None:
    """An HPA whose maximum is below serving.replicas cannot exist."""
    target = KubernetesTarget.model_validate(
        {**PINNED.model_dump(), "autoscaling": {"max_replicas": 2}}
    )
    assert _paths(scaled_data(), target) == ["deploy.kubernetes.autoscaling.max_replicas"]


def test_target_fields_are_checked_with_their_yaml_paths() -> None:
    """Bad deploy.kubernetes values are SpecErrors naming deploy.kubernetes.<field>."""
    with pytest.raises(SpecError) as caught:
        parse_kubernetes_target(
            {"autoscaling": {"cpu_utilization": 500}, "namespace": "Bad_Name", "colour": 1},
            file="config/stack.yaml",
        )
    paths = sorted(problem.yaml_path for problem in caught.value.problems)
    assert paths == [
        "deploy.kubernetes.autoscaling.cpu_utilization",
        "deploy.kubernetes.colour",
        "deploy.kubernetes.namespace",
    ]


def test_model_image_and_claim_together_are_refused() -> None:
    """Pods get their models from one source only."""
    with pytest.raises(SpecError, match="not both"):
        parse_kubernetes_target(
            {"model_image": MODEL_IMAGE, "model_claim": "models"}, file="config/stack.yaml"
        )


def test_plan_refuses_unmappable_spec_naming_file_and_path(tmp_path: Path) -> None:
    """plan_kubernetes raises SpecError (nothing rendered) with the spec file and YAML path."""
    spec = StackSpec.model_validate(scaled_data())
    spec_path = tmp_path / "config" / "stack.yaml"
    with pytest.raises(SpecError) as caught:
        plan_kubernetes(spec, KubernetesTarget(serving_image=SERVING_IMAGE), spec_path, tmp_path)
    assert "config/stack.yaml: deploy.kubernetes.model_image: model_repository" in str(caught.value)


def test_problems_carry_the_line_validate_finds(tmp_path: Path) -> None:
    """With validate's line map a problem reads file:line: yaml.path: message."""
    data = scaled_data()
    data["serving"]["user"] = "0:0"
    spec_path = tmp_path / "stack.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    _, lines, _ = read_yaml(spec_path)
    spec = StackSpec.model_validate(data)
    (problem,) = to_spec_problems(check_kubernetes_mapping(spec, PINNED), "stack.yaml", lines.at)
    expected_line = next(
        number
        for number, text in enumerate(spec_path.read_text().splitlines(), 1)
        if text.strip().startswith("user:")
    )
    assert str(problem).startswith(f"stack.yaml:{expected_line}: serving.user: ")
