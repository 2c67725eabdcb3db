"""Where a stack is deployed: ``deploy`` in ``stack.yaml`` (the target, each target's options).

The stack spec says what is served (models, ports, flags, resources); these options say only what a
cluster needs on top: where pods get the models from (a model image copied in by an initContainer,
or a PersistentVolumeClaim), pinned image references, autoscaling, an optional Ingress with TLS and
the shutdown timings. Defaults are the safe choice; every field is checked here (pydantic) and the
error names the YAML path ``deploy.kubernetes.<field>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tfstack.errors import SpecError, SpecProblem

DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
"""RFC 1035 label: what Service names must be (so every object name uses it)."""
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"
YAML_ROOT: tuple[str, ...] = ("deploy", "kubernetes")

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Autoscaling(_Frozen):
    """A HorizontalPodAutoscaler on CPU utilisation (needs ``serving.resources.cpus``)."""

    enabled: bool = True
    min_replicas: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="Default: serving.replicas."
    )
    max_replicas: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="Default: twice the minimum."
    )
    cpu_utilization: Annotated[int, Field(ge=10, le=100)] = Field(
        default=70, description="Target average CPU use, percent of the CPU request."
    )


class Ingress(_Frozen):
    """An Ingress for the REST API; the cluster's ingress controller is the front door."""

    host: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    class_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN)] | None = None
    tls_secret: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN)] | None = Field(
        default=None, description="A kubernetes.io/tls Secret in the namespace; TLS ends there."
    )


class KubernetesTarget(_Frozen):
    """``deploy.kubernetes``: everything the manifests need beyond the stack spec."""

    namespace: Annotated[str, Field(pattern=DNS_LABEL_PATTERN)] | None = Field(
        default=None, description="Default: the project name."
    )
    name: Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=40)] | None = Field(
        default=None, description="Prefix of every object name. Default: the project name."
    )
    serving_image: str | None = Field(
        default=None,
        description="The server image as the cluster pulls it (registry/name:tag or @sha256:...). "
        "Default: serving.image, which must then not be :latest.",
    )
    model_image: str | None = Field(
        default=None,
        description="An image holding the model repository at model_image_path; an initContainer "
        "copies it into the pod. Needs `cp` in the image (busybox or Debian based).",
    )
    model_image_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_.-]*$")] = "/models"
    model_claim: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN)] | None = Field(
        default=None,
        description="A PersistentVolumeClaim (ReadOnlyMany or ReadWriteMany) holding the model "
        "repository, mounted read-only at /models.",
    )
    models_size_limit: Annotated[str, Field(pattern=QUANTITY_PATTERN)] = Field(
        default="10Gi", description="Size limit of the emptyDir the model image is copied into."
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    ingress: Ingress | None = None
    drain_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=10,
        description="How long the server finishes in-flight requests after SIGTERM.",
    )
    pre_stop_seconds: Annotated[int, Field(ge=0, le=60)] = Field(
        default=5,
        description="Sleep before SIGTERM so endpoints stop sending traffic before the drain.",
    )
    startup_timeout_seconds: Annotated[int, Field(ge=10, le=3600)] = Field(
        default=300, description="How long every model may take to load before the pod restarts."
    )

    @model_validator(mode="after")
    def _one_model_source(self) -> KubernetesTarget:
        if self.model_image is not None and self.model_claim is not None:
            raise ValueError("give model_image or model_claim, not both")
        return self


LOCAL_REGISTRY = "tfstack-registry:5000"
"""The local cluster's registry as its nodes pull from it (``invoke cluster up``)."""
LOCAL_PUSH_REGISTRY = "127.0.0.1:5000"
"""The same registry as this host pushes to it (published on 127.0.0.1 only)."""
SWARM_YAML_ROOT: tuple[str, ...] = ("deploy", "swarm")


class SwarmTarget(_Frozen):
    """``deploy.swarm``: what a Docker Swarm needs beyond the stack spec (docs/swarm.md)."""

    manager: str | None = Field(
        default=None,
        description="A manager's Docker API (tcp://host:2376, ssh://user@host). Default: "
        "DOCKER_HOST when set, else the local cluster of `invoke cluster up`.",
    )
    stack: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")] | None = Field(
        default=None, description="The `docker stack` name. Default: the project name."
    )
    registry: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")] = (
        Field(
            default=LOCAL_REGISTRY,
            description="Where every node pulls the stack's images from (host[:port][/prefix]).",
        )
    )
    push_registry: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")] | None
    ) = Field(
        default=None,
        description="The same registry as this machine pushes to it. Default: registry, or "
        f"{LOCAL_PUSH_REGISTRY} for the local cluster's {LOCAL_REGISTRY}.",
    )
    endpoint_mode: Literal["dnsrr", "vip"] = Field(
        default="dnsrr",
        description="dnsrr: tasks.<service> resolves to every task (works without IPVS). vip: "
        "one virtual IP balanced by IPVS (needs the ip_vs kernel module on every node).",
    )
    max_replicas_per_node: Annotated[int, Field(ge=0, le=64)] = Field(
        default=0, description="Placement limit per node (0: none); replicas are spread anyway."
    )
    constraints: list[Annotated[str, Field(min_length=3, max_length=200)]] = Field(
        default_factory=list,
        description="Swarm placement constraints of the serving service (node.labels.x==y).",
    )
    update_parallelism: Annotated[int, Field(ge=1, le=64)] = 1
    update_delay_seconds: Annotated[int, Field(ge=0, le=600)] = 2
    monitor_seconds: Annotated[int, Field(ge=1, le=3600)] | None = Field(
        default=None,
        description="How long Swarm watches an updated task before the next (and before a failure "
        "rolls back). Default and minimum: the health check window.",
    )
    layers: Literal["auto", "gzip", "uncompressed"] = Field(
        default="auto",
        description="How images are pushed. gzip: `docker push` (the engine's credentials and "
        "TLS; compressing on one core, decompressing on every node). uncompressed: tfstack "
        "streams `docker save` into the registry's v2 API over plain HTTP without credentials "
        "(4x the bytes, none of the gzip CPU). auto: uncompressed for the local cluster's "
        "registry, gzip otherwise.",
    )
    door_on_manager: bool = Field(
        default=True,
        description="Run the front door on a manager node (whose ports reach this host for the "
        "local cluster); false lets Swarm choose any node.",
    )

    def push_to(self) -> str:
        """The registry this machine pushes to (the nodes pull the same repository)."""
        if self.push_registry is not None:
            return self.push_registry
        return LOCAL_PUSH_REGISTRY if self.registry == LOCAL_REGISTRY else self.registry

    def layer_push(self) -> Literal["gzip", "uncompressed"]:
        """The push path ``layers`` resolves to (``auto``: uncompressed for the local cluster)."""
        if self.layers != "auto":
            return self.layers
        return "uncompressed" if self.registry == LOCAL_REGISTRY else "gzip"


DEPLOY_TARGETS = ("compose", "kubernetes", "swarm")
"""Deployment targets: Docker Compose on this host (runs here), Kubernetes (rendered, validated),
Docker Swarm (deployed with `docker stack deploy` on a manager)."""


class DeploySpec(_Frozen):
    """``deploy``: which target ``render``/``up`` use by default, and each target's options."""

    target: Literal["compose", "kubernetes", "swarm"] = Field(
        default="compose",
        description="compose: run on this Docker host. kubernetes: render deploy/kubernetes/ "
        "(a Kustomize base) for a cluster. swarm: `docker stack deploy` on a Swarm manager. "
        "`--target` on a task overrides it.",
    )
    kubernetes: KubernetesTarget = Field(default_factory=KubernetesTarget)
    swarm: SwarmTarget = Field(default_factory=SwarmTarget)


# --------------------------------------------------------------------------- image references


@dataclass(frozen=True)
class ImageReference:
    """``name[:tag][@sha256:...]`` split; the registry host (with its port) stays in ``name``."""

    name: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        """A digest, or a tag other than ``latest``: the cluster gets the same bytes every pull."""
        return self.digest is not None or (self.tag is not None and self.tag != "latest")


def parse_image(reference: str) -> ImageReference | None:
    """Split an image reference; None when it is not one (empty, spaces, bad digest)."""
    if not reference or any(c.isspace() for c in reference):
        return None
    name, _, digest = reference.partition("@")
    if digest and not _DIGEST.match(digest):
        return None
    tag: str | None = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    if not name or tag == "":
        return None
    return ImageReference(name=name, tag=tag, digest=digest or None)


# --------------------------------------------------------------------------- loading


def _yaml_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def parse_kubernetes_target(data: Mapping[str, Any] | None, *, file: str) -> KubernetesTarget:
    """``deploy.kubernetes`` as read from YAML -> a target; SpecError naming each YAML path.

    The spec's ``deploy.kubernetes`` is this model, and validate reports its errors with line
    numbers; this function serves callers that hold the mapping alone.
    """
    try:
        return KubernetesTarget.model_validate(dict(data or {}))
    except ValidationError as exc:
        problems = [
            SpecProblem(
                file=file,
                yaml_path=_yaml_path(
                    YAML_ROOT + tuple(p for p in error["loc"] if not _is_union_tag(p))
                ),
                message=error["msg"],
            )
            for error in exc.errors()
        ]
        raise SpecError(problems) from exc


def _is_union_tag(part: str | int) -> bool:
    # pydantic names the chosen member of `X | None` in the loc ("str", "constrained-str").
    return isinstance(part, str) and (part in {"str", "int", "none"} or part.startswith("constr"))
