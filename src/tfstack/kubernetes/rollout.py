"""What a rollout changes on Kubernetes, as manifests: printable for ``rollout --dry-run``.

A new model image (or server image, or start-time config) changes the Deployment's pod template, so
Kubernetes creates a new ReplicaSet and replaces pods one at a time (``maxSurge: 1``,
``maxUnavailable: 0``), each new pod taking traffic only once its readiness probe sees every
declared version and label AVAILABLE. A models.config change alone only updates the ConfigMap:
running pods pick it up without a restart. Pure: manifests in, a plan out; no cluster is asked.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tfstack.errors import UsageError
from tfstack.kubernetes.manifests import (
    KUBERNETES_DIR,
    KubernetesManifests,
    plan_kubernetes,
)
from tfstack.spec import StackSpec
from tfstack.spec.deploy import KubernetesTarget

_POLL_FLAG = "--model_config_file_poll_wait_seconds="


@dataclass(frozen=True)
class KubernetesRollout:
    """The manifests before and after, what each change makes the cluster do, and the diffs."""

    before: KubernetesManifests
    after: KubernetesManifests
    effects: list[str]
    diffs: dict[str, str]
    new_replica_set: bool

    def text(self) -> str:
        """The dry-run report: effects first, then a unified diff per changed file."""
        lines = ["Kubernetes rollout (dry run: nothing is applied):"]
        lines += [f"  - {effect}" for effect in self.effects]
        if self.diffs:
            lines += ["", f"apply with: kubectl apply -k {KUBERNETES_DIR}", ""]
        return "\n".join(lines) + "\n" + "".join(self.diffs.values())

    def describe(self) -> list[str]:
        """What ``rollout --target kubernetes`` prints: :meth:`text` (it has no JSON form)."""
        return [self.text()]


def _by_kind(manifests: KubernetesManifests) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests.documents()}


def _images(template: Mapping[str, Any]) -> dict[str, str]:
    pod = template["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    return {container["name"]: container["image"] for container in containers}


def _poll_seconds(deployment: Mapping[str, Any]) -> int:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for arg in container.get("args", []):
            if arg.startswith(_POLL_FLAG):
                return int(arg[len(_POLL_FLAG) :])
    return 0


def _template_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changes: list[str] = []
    old_images, new_images = _images(old), _images(new)
    for name in sorted(old_images.keys() | new_images.keys()):
        before, after = old_images.get(name), new_images.get(name)
        if before != after:
            changes.append(f"container {name}: image {before or '(none)'} -> {after or '(none)'}")
    if old["metadata"].get("annotations") != new["metadata"].get("annotations"):
        changes.append("start-time configs (batching or monitoring) changed")
    if not changes:
        changes.append("pod settings changed (flags, probes, resources or volumes)")
    return changes


def _deployment_effect(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    what = "; ".join(_template_changes(old["spec"]["template"], new["spec"]["template"]))
    strategy = new["spec"]["strategy"]["rollingUpdate"]
    return (
        f"Deployment {name}: pod template changes ({what}) -> a new ReplicaSet. Pods are "
        f"replaced one at a time (maxSurge {strategy['maxSurge']}, maxUnavailable "
        f"{strategy['maxUnavailable']}); a new pod gets traffic only when its readiness probe "
        "sees every declared version and label AVAILABLE, and an old one is removed only then. "
        f"Roll back with `kubectl rollout undo deployment/{name}` (the previous ReplicaSet is "
        "kept)."
    )


def _config_effect(name: str, deployment: Mapping[str, Any] | None) -> str:
    poll = _poll_seconds(deployment) if deployment is not None else 0
    reload = (
        f"servers re-read models.config every {poll} s"
        if poll
        else "send HandleReloadConfigRequest to every pod listed by the headless Service "
        f"{deployment['metadata']['name'] if deployment else name}-pods (never through the "
        "ClusterIP Service, which reaches one pod)"
    )
    return (
        f"ConfigMap {name}: models.config changes in place, no new pods. The kubelet updates the "
        f"mounted file within its sync period (about a minute); then {reload}."
    )


def rollout_changes(before: KubernetesManifests, after: KubernetesManifests) -> KubernetesRollout:
    """Compare two renders: what applying ``after`` over ``before`` makes the cluster do."""
    old_objects, new_objects = _by_kind(before), _by_kind(after)
    effects: list[str] = []
    new_replica_set = False
    new_deployments = [doc for (kind, _), doc in new_objects.items() if kind == "Deployment"]
    for key in sorted(old_objects.keys() | new_objects.keys()):
        kind, name = key
        old, new = old_objects.get(key), new_objects.get(key)
        if old == new:
            continue
        if old is None:
            effects.append(f"{kind} {name}: created")
        elif new is None:
            effects.append(f"{kind} {name}: deleted (kubectl apply --prune, or delete it by hand)")
        elif kind == "Deployment" and old["spec"]["template"] != new["spec"]["template"]:
            new_replica_set = True
            effects.append(_deployment_effect(name, old, new))
        elif kind == "ConfigMap":
            effects.append(_config_effect(name, new_deployments[0] if new_deployments else None))
        else:
            effects.append(f"{kind} {name}: updated in place, no pods replaced")
    if not effects:
        effects.append("nothing changes")
    diffs: dict[str, str] = {}
    for path in [*before.files, *(p for p in after.files if p not in before.files)]:
        old_text, new_text = before.files.get(path, ""), after.files.get(path, "")
        if old_text != new_text:
            diffs[path] = "".join(
                difflib.unified_diff(
                    old_text.splitlines(True),
                    new_text.splitlines(True),
                    fromfile=f"a/{path}",
                    tofile=f"b/{path}",
                )
            )
    return KubernetesRollout(before, after, effects, diffs, new_replica_set)


def plan_kubernetes_rollout(
    spec: StackSpec,
    target: KubernetesTarget,
    spec_path: Path,
    root: Path,
    *,
    model_image: str | None = None,
    serving_image: str | None = None,
    new_spec: StackSpec | None = None,
) -> KubernetesRollout:
    """The rollout to a new model image (and/or server image, and/or spec), as a dry-run plan."""
    before = plan_kubernetes(spec, target, spec_path, root)
    update: dict[str, Any] = {}
    if model_image is not None:
        # Models now come from the image: a claim the pods mounted before is dropped with it.
        update["model_image"] = model_image
        update["model_claim"] = None
    if serving_image is not None:
        update["serving_image"] = serving_image
    try:
        new_target = KubernetesTarget.model_validate({**target.model_dump(), **update})
    except ValidationError as exc:
        reasons = "; ".join(str(error["msg"]) for error in exc.errors())
        raise UsageError(
            f"the rollout's images are not valid Kubernetes target options: {reasons}",
            hint="pass image references such as registry/name@sha256:<64 hex digits>",
        ) from exc
    after = plan_kubernetes(new_spec or spec, new_target, spec_path, root)
    return rollout_changes(before, after)
