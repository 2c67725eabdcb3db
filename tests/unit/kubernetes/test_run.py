"""The Kubernetes target as tasks reach it: spec file in, manifests or a rollout plan out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.specfixtures import Project, valid_spec
from tfstack.errors import SpecError, UsageError
from tfstack.kubernetes import KUBERNETES_DIR, kubernetes_rollout_plan, render_kubernetes
from tfstack.spec.load import check_spec, deploy_target

DIGEST = "sha256:" + "ab" * 32
MODEL_IMAGE = f"registry.example.internal/models@{DIGEST}"


def _kubernetes_spec(**kubernetes: Any) -> dict[str, Any]:
    data = valid_spec()
    data["serving"] |= {
        "image": "tfstack/serving-runtime:0.1.0",
        "resources": {"cpus": 1, "memory": "1g"},
    }
    data["deploy"] = {"target": "kubernetes", "kubernetes": kubernetes}
    return data


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path).with_models()


def test_deploy_target_defaults_to_the_spec_and_refuses_unknown_overrides(project: Project) -> None:
    """--target wins when known; an unknown one is a usage error (exit 2) naming the targets."""
    project.write(_kubernetes_spec(model_claim="models"))
    assert deploy_target(project.spec) == "kubernetes"
    assert deploy_target(project.spec, "compose") == "compose"
    with pytest.raises(UsageError) as caught:
        deploy_target(project.spec, "nomad")
    assert caught.value.exit_code == 2
    assert "compose or kubernetes" in str(caught.value)


def test_validate_reports_unmappable_specs_with_lines(project: Project) -> None:
    """deploy.target kubernetes, models only on this host: reported with file and line."""
    spec = project.write(_kubernetes_spec())
    problems = check_spec(spec).problems
    paths = {problem.yaml_path: problem for problem in problems}
    assert "deploy.kubernetes.model_image" in paths
    assert paths["deploy.kubernetes.model_image"].line is not None


def test_compose_override_skips_kubernetes_checks(project: Project) -> None:
    """Rendering the Compose target of a Kubernetes spec does not fail on cluster-only rules."""
    spec = project.write(_kubernetes_spec())
    assert check_spec(spec, target="compose").problems == []


def test_render_kubernetes_writes_the_base_atomically(project: Project) -> None:
    """A mappable spec renders every manifest; a dry run writes nothing."""
    spec = project.write(_kubernetes_spec(model_claim="models"))
    planned = render_kubernetes(spec, project.root, dry_run=True)
    assert planned.written == []
    assert not (project.root / KUBERNETES_DIR).exists()
    report = render_kubernetes(spec, project.root)
    kustomization = yaml.safe_load(
        (project.root / KUBERNETES_DIR / "kustomization.yaml").read_text()
    )
    assert sorted(report.written) == sorted(
        f"{KUBERNETES_DIR}/{name}" for name in [*kustomization["resources"], "kustomization.yaml"]
    )


def test_render_kubernetes_refuses_an_unmappable_spec_without_writing(project: Project) -> None:
    """No model image or claim: SpecError with the YAML path, deploy/kubernetes never created."""
    spec = project.write(_kubernetes_spec())
    with pytest.raises(SpecError, match=r"deploy\.kubernetes\.model_image"):
        render_kubernetes(spec, project.root)
    assert not (project.root / KUBERNETES_DIR).exists()


def test_rollout_plan_needs_dry_run_and_an_image(project: Project) -> None:
    """tfstack never deploys to a cluster: without --dry-run or a new image it says why (exit 2)."""
    spec = project.write(_kubernetes_spec(model_claim="models"))
    with pytest.raises(UsageError, match="does not deploy to a cluster"):
        kubernetes_rollout_plan(spec, project.root, dry_run=False, model_image=MODEL_IMAGE)
    with pytest.raises(UsageError, match="needs the new image"):
        kubernetes_rollout_plan(spec, project.root, dry_run=True)


def test_rollout_from_a_claim_to_a_model_image(project: Project) -> None:
    """Moving models from a PVC to a model image is a new ReplicaSet, not a validation crash."""
    spec = project.write(_kubernetes_spec(model_claim="models"))
    plan = kubernetes_rollout_plan(spec, project.root, dry_run=True, model_image=MODEL_IMAGE)
    assert "new ReplicaSet" in plan.text()
    assert MODEL_IMAGE in plan.text()


def test_rollout_with_a_malformed_image_is_a_usage_error(project: Project) -> None:
    """A bad reference is reported as bad input, not a pydantic traceback."""
    spec = project.write(_kubernetes_spec(model_claim="models"))
    with pytest.raises((UsageError, SpecError)):
        kubernetes_rollout_plan(spec, project.root, dry_run=True, model_image="not an image")
