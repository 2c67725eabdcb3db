"""Planning ``up`` (pure): what runs, compared with what the spec wants, decides one action.

- ``start``: nothing runs yet (or the container stopped): ``docker compose up``;
- ``recreate``: server flags, mounts, ports or the image changed: ``docker compose up`` recreates;
- ``reload``: only models, labels or policies changed: the new ``ModelServerConfig`` is sent with
  gRPC ``HandleReloadConfigRequest`` (works with the official server too); no restart. Labels that
  would point at versions not AVAILABLE yet are held back for a second reload (contract section 4);
- ``noop``: nothing changed; nothing is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tfstack.docker.compose import (
    ContainerInfo,
)
from tfstack.serving.waiting import (
    ModelExpectation,
)
from tfstack.spec import StackSpec, check_spec

SERVICE = "serving"
DEFAULT_TIMEOUT_S = 180.0
RELOAD_TIMEOUT_S = 120.0


class UpAction(StrEnum):
    START = "start"
    RECREATE = "recreate"
    RELOAD = "reload"
    NOOP = "noop"


@dataclass(frozen=True)
class Loaded:
    """A validated spec with what the model repository holds."""

    spec: StackSpec
    spec_path: Path
    root: Path  # project root: compose/, config/, state/ live here
    expectations: tuple[ModelExpectation, ...]


def project_root_for(spec_path: Path) -> Path:
    """``<root>/config/stack.yaml`` → ``<root>``."""
    return spec_path.resolve().parent.parent


def load(spec_path: Path, root: Path | None = None) -> Loaded:
    """Validate the spec against the disk; expectations = the versions each policy serves."""

    root = root or project_root_for(spec_path)
    report = check_spec(spec_path, check_disk=True, project_root=root)
    spec = report.raise_for_problems()
    served = {item.name: item.served for item in report.inventory}
    expectations = tuple(
        ModelExpectation(model.name, tuple(served.get(model.name, ())), dict(model.labels))
        for model in spec.models
    )
    return Loaded(spec, spec_path, root, expectations)


@dataclass(frozen=True)
class Observed:
    """What runs, as far as planning cares."""

    containers: tuple[ContainerInfo, ...]
    desired_hashes: Mapping[str, str]  # service -> compose config hash of the rendered file
    desired_image_id: str | None
    applied_models_config: str | None  # what the server last accepted (None: unknown)
    desired_models_config: str
    models_ready: bool | None = None  # every declared version and label AVAILABLE (None: unknown)
    desired_replicas: int | None = None  # serving.replicas (None: not compared)


@dataclass(frozen=True)
class UpPlan:
    action: UpAction
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.action.value}: {'; '.join(self.reasons)}"


def plan_up(observed: Observed) -> UpPlan:
    """Decide what ``up`` must do (see the module docstring)."""
    serving = [c for c in observed.containers if c.service == SERVICE]
    if not serving:
        return UpPlan(UpAction.START, ("no serving container exists",))
    recreate: list[str] = []
    # Every service's containers: the front door's config digest is part of its compose hash, so
    # a changed door config recreates the door (and only it: compose leaves the rest alone).
    for container in observed.containers:
        wanted = observed.desired_hashes.get(container.service)
        if wanted is not None and container.config_hash != wanted:
            what = "flags, ports, mounts" if container.service == SERVICE else "its configuration"
            recreate.append(f"{container.name}: compose configuration changed ({what})")
    for container in serving:
        if observed.desired_image_id and container.image_id != observed.desired_image_id:
            recreate.append(f"{container.name}: image changed")
    if set(observed.desired_hashes) - {c.service for c in observed.containers}:
        missing = sorted(set(observed.desired_hashes) - {c.service for c in observed.containers})
        recreate.append(f"services without a container: {', '.join(missing)}")
    if recreate:
        return UpPlan(UpAction.RECREATE, tuple(recreate))
    stopped = [c.name for c in serving if c.state != "running"]
    if stopped:
        return UpPlan(UpAction.START, (f"not running: {', '.join(stopped)}",))
    if observed.desired_replicas is not None and len(serving) != observed.desired_replicas:
        # Compose's config hash leaves the replica count out: scaling is seen here. Compose
        # stops the leaving replicas (they drain) or starts the new ones; the rest stay as they are.
        return UpPlan(
            UpAction.RECREATE,
            (f"serving.replicas: {len(serving)} running, {observed.desired_replicas} wanted",),
        )
    reasons: list[str] = []
    if observed.applied_models_config is None:
        reasons.append("the model config the server holds is unknown")
    elif _config_body(observed.applied_models_config) != _config_body(
        observed.desired_models_config
    ):
        reasons.append("models, labels or policies changed")
    if observed.models_ready is False:
        reasons.append("not every declared version and label is AVAILABLE")
    if reasons:
        return UpPlan(UpAction.RELOAD, tuple(reasons))
    return UpPlan(UpAction.NOOP, ("nothing changed",))


def _config_body(text: str) -> str:
    """models.config without comment lines (the header names the spec file, not the models)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def first_step_labels(
    desired: Mapping[str, Mapping[str, int]],
    available: Mapping[str, set[int]],
    current: Mapping[str, Mapping[str, int | None]],
) -> dict[str, dict[str, int]]:
    """Labels safe to send now: a label may only point at an AVAILABLE version (contract §4).

    A label whose target is not AVAILABLE yet keeps its current target when that one is
    AVAILABLE (clients using it keep working), else it waits for the second reload.
    """
    result: dict[str, dict[str, int]] = {}
    for model, labels in desired.items():
        safe: dict[str, int] = {}
        for label, version in labels.items():
            if version in available.get(model, set()):
                safe[label] = version
                continue
            old = current.get(model, {}).get(label)
            if old is not None and old in available.get(model, set()):
                safe[label] = old
        result[model] = safe
    return result


@dataclass(frozen=True)
class ReloadStep:
    """One HandleReloadConfigRequest: labels per model and versions to keep loaded."""

    labels: Mapping[str, Mapping[str, int]]
    keep_versions: Mapping[str, tuple[int, ...]]  # model -> versions held for labels (step 1)


def plan_reload(
    expectations: Sequence[ModelExpectation],
    available: Mapping[str, set[int]],
    current: Mapping[str, Mapping[str, int | None]],
) -> list[ReloadStep]:
    """One step when every label can move now, else two (hold-back, then the final labels)."""
    desired = {e.name: dict(e.labels) for e in expectations}
    first = first_step_labels(desired, available, current)
    if first == desired:
        return [ReloadStep(desired, {})]
    keep: dict[str, tuple[int, ...]] = {}
    for expectation in expectations:
        held = {
            v
            for label, v in first[expectation.name].items()
            if v != desired[expectation.name][label]
        }
        if held - set(expectation.versions):
            keep[expectation.name] = tuple(sorted(set(expectation.versions) | held))
    return [ReloadStep(first, keep), ReloadStep(desired, {})]


def step_config_text(desired_text: str, step: ReloadStep) -> Any:
    """The ModelServerConfig message for a reload step: labels replaced, held versions kept."""
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(desired_text, config)
    for entry in config.model_config_list.config:
        entry.version_labels.clear()
        for label, version in sorted(step.labels.get(entry.name, {}).items()):
            entry.version_labels[label] = version
        if entry.name in step.keep_versions:
            entry.model_version_policy.Clear()
            entry.model_version_policy.specific.versions.extend(step.keep_versions[entry.name])
    return config
