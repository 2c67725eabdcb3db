"""Can this stack run on Kubernetes as written? Problems named by YAML path, before any rendering.

Pure: spec and target in, a list of :class:`KubernetesProblem` out. Each problem carries the YAML
location as a tuple (``("serving", "user")``) so that validate can look up the line and report
``stack.yaml:57: serving.user: ...`` like every other spec problem (see :func:`to_spec_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from tfstack.errors import SpecProblem
from tfstack.spec.deploy import YAML_ROOT, KubernetesTarget, parse_image
from tfstack.spec.model import StackSpecFields

Loc = tuple[str | int, ...]

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_UID_GID = re.compile(r"^([0-9]+)(?::([0-9]+))?$")
_PORT_FLAGS = ("--port", "--rest_api_port", "--model_config_file")


@dataclass(frozen=True)
class KubernetesProblem:
    """One reason the spec cannot map onto the manifests, at a YAML location."""

    loc: Loc
    message: str
    hint: str | None = None

    @property
    def yaml_path(self) -> str:
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out


def _target_loc(*parts: str | int) -> Loc:
    return YAML_ROOT + parts


def object_name(spec: StackSpecFields, target: KubernetesTarget) -> str:
    """Prefix of every object name: ``deploy.kubernetes.name`` or the project."""
    return target.name or spec.project


def namespace(spec: StackSpecFields, target: KubernetesTarget) -> str:
    return target.namespace or spec.project


def run_as(spec: StackSpecFields) -> tuple[int, int] | None:
    """``serving.user`` as numeric (uid, gid), the group defaulting to the uid; None if not."""
    match = _UID_GID.match(spec.serving.user)
    if match is None:
        return None
    uid = int(match.group(1))
    return uid, int(match.group(2)) if match.group(2) is not None else uid


def autoscaling_bounds(spec: StackSpecFields, target: KubernetesTarget) -> tuple[int, int]:
    """(min, max) replicas of the HPA: the minimum defaults to serving.replicas, max to twice it."""
    low = target.autoscaling.min_replicas or spec.serving.replicas
    high = target.autoscaling.max_replicas or 2 * low
    return low, high


def _image_problems(
    reference: str | None, loc: Loc, what: str, hint: str
) -> list[KubernetesProblem]:
    if reference is None:
        return []
    parsed = parse_image(reference)
    if parsed is None:
        return [KubernetesProblem(loc, f"{what} {reference!r} is not an image reference", hint)]
    if not parsed.pinned:
        return [
            KubernetesProblem(
                loc,
                f"{what} {reference!r} is not pinned: `:latest` (or no tag) gives each node "
                "whatever was pushed last",
                hint,
            )
        ]
    return []


def check_kubernetes_mapping(
    spec: StackSpecFields, target: KubernetesTarget
) -> list[KubernetesProblem]:
    """Every reason this spec cannot become sound manifests; empty when it can."""
    problems: list[KubernetesProblem] = []
    serving = spec.serving
    pin_hint = "pin it by digest (name@sha256:...) or a release tag, as the cluster pulls it"

    if target.model_image is None and target.model_claim is None:
        problems.append(
            KubernetesProblem(
                _target_loc("model_image"),
                f"model_repository {spec.model_repository!r} is a directory on this host, which "
                "pods cannot see, and no model image or volume claim is given",
                "set deploy.kubernetes.model_image to an image holding the repository at "
                "/models, or deploy.kubernetes.model_claim to a PersistentVolumeClaim holding it",
            )
        )
    problems += _image_problems(
        target.model_image, _target_loc("model_image"), "model image", pin_hint
    )
    if target.serving_image is not None:
        problems += _image_problems(
            target.serving_image, _target_loc("serving_image"), "server image", pin_hint
        )
    else:
        problems += _image_problems(
            serving.image,
            ("serving", "image"),
            "server image",
            "set deploy.kubernetes.serving_image to the image as the cluster pulls it, pinned "
            "by digest (name@sha256:...) or a release tag",
        )

    if serving.grpc_port == serving.rest_port:
        problems.append(
            KubernetesProblem(
                ("serving", "rest_port"),
                f"gRPC and REST both use port {serving.rest_port}; a pod cannot listen twice on it",
                "give serving.rest_port and serving.grpc_port different values",
            )
        )
    for index, flag in enumerate(serving.extra_flags):
        name = flag.split("=", 1)[0]
        if name in _PORT_FLAGS:
            problems.append(
                KubernetesProblem(
                    ("serving", "extra_flags", index),
                    f"{name} in extra_flags overrides what the Service, probes and ConfigMap mount "
                    "are rendered from",
                    "set serving.grpc_port / serving.rest_port instead and drop the flag",
                )
            )

    ids = run_as(spec)
    if ids is None:
        problems.append(
            KubernetesProblem(
                ("serving", "user"),
                f"serving.user {serving.user!r} is not numeric uid:gid; Kubernetes' runAsUser "
                "and runAsNonRoot need numbers",
                'write it as "1000:1000"',
            )
        )
    elif ids[0] == 0:
        problems.append(
            KubernetesProblem(
                ("serving", "user"),
                "serving.user is root (uid 0); pods run with runAsNonRoot",
                'use the image\'s server user, "1000:1000"',
            )
        )
    if not serving.healthcheck:
        problems.append(
            KubernetesProblem(
                ("serving", "healthcheck"),
                "the startup and readiness probes run modelserver-probe from the server image, "
                "and healthcheck: false says the image has none",
                "use tfstack's runtime image and set serving.healthcheck: true",
            )
        )
    for field in ("cpus", "memory"):
        if getattr(serving.resources, field) is None:
            problems.append(
                KubernetesProblem(
                    ("serving", "resources", field),
                    f"serving.resources.{field} is not set; pods need requests and limits "
                    "(the scheduler places by requests, the HPA scales on the CPU request)",
                    "set serving.resources.cpus and serving.resources.memory",
                )
            )

    if target.name is None and not _NAME.match(spec.project):
        problems.append(
            KubernetesProblem(
                ("project",),
                f"project {spec.project!r} cannot prefix Kubernetes object names (a lower-case "
                "letter, then letters, digits or '-', at most 40 characters)",
                "set deploy.kubernetes.name",
            )
        )
    if target.namespace is None and not _NAMESPACE.match(spec.project):
        problems.append(
            KubernetesProblem(
                ("project",),
                f"project {spec.project!r} is not a valid namespace name",
                "set deploy.kubernetes.namespace",
            )
        )
    if target.autoscaling.enabled:
        low, high = autoscaling_bounds(spec, target)
        if high < low:
            problems.append(
                KubernetesProblem(
                    _target_loc("autoscaling", "max_replicas"),
                    f"max_replicas {high} is below the minimum {low}",
                    "raise deploy.kubernetes.autoscaling.max_replicas or lower min_replicas "
                    "(default: serving.replicas)",
                )
            )
    for index, model in enumerate(spec.models):
        if model.path is not None and ".." in PurePosixPath(model.path).parts:
            problems.append(
                KubernetesProblem(
                    ("models", index, "path"),
                    f"model {model.name}: path {model.path!r} leaves the model repository, which "
                    "is all a pod sees at /models",
                    "put the model inside the repository (the model image or claim)",
                )
            )
    return problems


def to_spec_problems(
    problems: Sequence[KubernetesProblem], file: str, line_at: Callable[[Loc], int | None]
) -> list[SpecProblem]:
    """Problems as validate reports them: file, line (from ``line_at``) and YAML path."""
    return [
        SpecProblem(
            file=file,
            yaml_path=problem.yaml_path,
            message=problem.message,
            line=line_at(problem.loc),
            hint=problem.hint,
        )
        for problem in problems
    ]
