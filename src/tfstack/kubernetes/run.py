"""Entry points for tasks: the spec file in, ``deploy/kubernetes/`` (or a rollout plan) out.

The spec is loaded with the Kubernetes checks on (``target="kubernetes"``), so a spec that cannot
map fails like any validate error: file, line, YAML path, hint. Nothing talks to a cluster.
"""

from __future__ import annotations

from pathlib import Path

from tfstack.errors import UsageError
from tfstack.kubernetes.apply import KubernetesWriteReport, write_kubernetes
from tfstack.kubernetes.manifests import plan_kubernetes
from tfstack.kubernetes.rollout import KubernetesRollout, plan_kubernetes_rollout
from tfstack.spec import load_spec


def render_kubernetes(
    spec_path: Path, root: Path, *, dry_run: bool = False
) -> KubernetesWriteReport:
    """Validate for Kubernetes, render the Kustomize base, write it atomically (or plan only)."""
    spec = load_spec(spec_path, project_root=root, target="kubernetes")
    manifests = plan_kubernetes(spec, spec.deploy.kubernetes, spec_path, root)
    return write_kubernetes(manifests, root, dry_run=dry_run)


def kubernetes_rollout_plan(
    spec_path: Path,
    root: Path,
    *,
    dry_run: bool,
    model_image: str | None = None,
    serving_image: str | None = None,
) -> KubernetesRollout:
    """What rolling out a new model image (and/or server image) changes in the manifests."""
    if not dry_run:
        raise UsageError(
            "tfstack renders and validates the Kubernetes target but does not deploy to a cluster",
            hint="run `rollout --target kubernetes --dry-run --model-image REF` to see the "
            "changes, then `render --target kubernetes` and apply deploy/kubernetes with your "
            "pipeline (kubectl apply -k deploy/kubernetes)",
        )
    if model_image is None and serving_image is None:
        raise UsageError(
            "a Kubernetes rollout needs the new image: nothing would change",
            hint="pass --model-image REF (a model image pinned by digest) and/or --serving-image",
        )
    spec = load_spec(spec_path, project_root=root, target="kubernetes")
    return plan_kubernetes_rollout(
        spec,
        spec.deploy.kubernetes,
        spec_path,
        root,
        model_image=model_image,
        serving_image=serving_image,
    )
