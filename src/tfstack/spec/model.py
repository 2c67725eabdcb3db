"""The stack spec: typed, frozen objects for ``config/stack.yaml``.

The data model lives here; loading (YAML with line numbers), schema errors and the semantic checks
live in :mod:`tfstack.spec.load` and its phases, so this module stays a plain description of the
format. :class:`StackSpecFields` holds the root's fields; :class:`tfstack.spec.StackSpec` (in
``load``) adds the ``from_yaml`` constructor, so this module never imports the loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tfstack.errors import StackError
from tfstack.spec.deploy import DeploySpec
from tfstack.spec.frontend import FrontendSpec
from tfstack.spec.slo import SloSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
LABEL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?[kmgKMG]?[bB]?$"
METRICS_PATH_PATTERN = r"^/[A-Za-z0-9/_.-]*$"
SPEC_FORMAT: Literal[1] = 1
PROMETHEUS_IMAGE = "tfstack/prometheus:latest"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class LatestPolicy(_Frozen):
    """Serve the N highest numbered versions found on disk (TF Serving's default, N = 1)."""

    latest: Annotated[int, Field(ge=1, le=1000)] = 1


class AllPolicy(_Frozen):
    """Serve every version found on disk."""

    all: Literal[True] = True


class SpecificPolicy(_Frozen):
    """Serve exactly these versions."""

    specific: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


VersionPolicy = LatestPolicy | AllPolicy | SpecificPolicy


class SampleRequest(_Frozen):
    """A request used for smoke tests after start, verification during rollouts and benchmarks.

    ``body`` is a TF Serving REST request body (``{"instances": ...}`` or ``{"inputs": ...}``;
    ``examples`` for classify/regress). ``body_file`` names a JSON file (relative to the spec)
    instead.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "default"
    method: Literal["predict", "classify", "regress"] = "predict"
    signature_name: str | None = None
    body: dict[str, Any] | None = None
    body_file: str | None = None
    expect: dict[str, Any] | None = Field(
        default=None, description="Expected response body; numbers compared within tolerance."
    )
    tolerance: Annotated[float, Field(ge=0)] = 1e-4

    @model_validator(mode="after")
    def _one_body(self) -> SampleRequest:
        if (self.body is None) == (self.body_file is None):
            raise ValueError("give exactly one of 'body' or 'body_file'")
        return self


class ModelSpec(_Frozen):
    """One model served by the stack."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Model name in TF Serving URLs.")]
    path: str | None = Field(
        default=None,
        description="Model directory holding numbered version directories; relative to the "
        "model repository (default: the model name) or absolute.",
    )
    policy: VersionPolicy = Field(default_factory=LatestPolicy)
    labels: dict[Annotated[str, Field(pattern=LABEL_PATTERN)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Version labels such as stable and canary."
    )
    samples: list[SampleRequest] = Field(default_factory=list)
    platform: Literal["tensorflow"] = "tensorflow"
    slo: SloSpec | None = Field(
        default=None,
        description="Gates a rollout's candidate version must pass against stable (see "
        "docs/spec.md); none: rollouts are verified by samples only.",
    )


class Resources(_Frozen):
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    memory: Annotated[str, Field(pattern=MEMORY_PATTERN)] | None = None


class ServingSpec(_Frozen):
    """The TF Serving service: image, ports and server flags."""

    image: str = "tfstack/serving-runtime:latest"
    grpc_port: Annotated[int, Field(ge=1, le=65535)] = 8500
    rest_port: Annotated[int, Field(ge=1, le=65535)] = 8501
    bind_address: str = "127.0.0.1"
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    resources: Resources = Field(default_factory=Resources)
    config_poll_seconds: Annotated[int, Field(ge=0)] = 0
    file_system_poll_seconds: Annotated[int, Field(ge=0)] = 1
    max_load_retries: Annotated[int, Field(ge=0)] = 5
    load_retry_interval_micros: Annotated[int, Field(ge=0)] = 60_000_000
    rest_api_timeout_ms: Annotated[int, Field(ge=1)] = 30_000
    intra_op_threads: Annotated[int, Field(ge=0)] = 0
    inter_op_threads: Annotated[int, Field(ge=0)] = 0
    enable_model_warmup: bool = True
    extra_flags: list[str] = Field(default_factory=list)
    user: str = Field(default="1000:1000", description="uid:gid the server runs as (never root).")
    healthcheck: bool = Field(
        default=True,
        description="Add a Compose healthcheck running `modelserver-probe` in the container; "
        "healthy only when every declared model version and label is AVAILABLE. Set false for "
        "images without the probe (the official tensorflow/serving image has none).",
    )
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=600)] = Field(
        default=8.0,
        description="On SIGTERM (`docker stop`, `down`, recreate), seconds in-flight requests get "
        "to finish. The compose stop_grace_period is this plus 5 s. Other than 8 (the runtime's "
        "default) it is passed as --shutdown_grace_seconds, a flag only tfstack's runtime knows.",
    )


class BatchingSpec(_Frozen):
    """Server-side batching (TF Serving BatchingParameters); one scheduler for all models."""

    enabled: bool = False
    max_batch_size: Annotated[int, Field(ge=1)] = 32
    batch_timeout_micros: Annotated[int, Field(ge=0)] = 1000
    max_enqueued_batches: Annotated[int, Field(ge=1)] = 100
    num_batch_threads: Annotated[int, Field(ge=1)] = 2
    allowed_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    pad_variable_length_inputs: bool = False


class MonitoringSpec(_Frozen):
    """Prometheus metrics served on the REST port."""

    enabled: bool = True
    path: Annotated[str, Field(pattern=METRICS_PATH_PATTERN)] = "/monitoring/prometheus/metrics"
    prometheus: bool = Field(
        default=False,
        description="Run a Prometheus server in the stack that scrapes every replica (and the "
        "front door); its UI and API are published on serving.bind_address:prometheus_port.",
    )
    prometheus_port: Annotated[int, Field(ge=1, le=65535)] = 9090
    prometheus_image: str = Field(
        default=PROMETHEUS_IMAGE,
        description="The Prometheus image; tfstack/prometheus is built offline from Debian's "
        "package when missing.",
    )
    scrape_interval_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    retention_hours: Annotated[int, Field(ge=1, le=8760)] = 24


class StackSpecFields(_Frozen):
    """A whole TF Serving deployment: ``config/stack.yaml``."""

    format: Literal[1] = SPEC_FORMAT
    project: Annotated[str, Field(pattern=PROJECT_PATTERN)] = Field(
        description="Compose project name; also the value of every tfstack label."
    )
    model_repository: str = Field(
        default="../models",
        description="Directory mounted read-only at /models in the server; relative to the spec.",
    )
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    serving: ServingSpec = Field(default_factory=ServingSpec)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    frontend: FrontendSpec = Field(default_factory=FrontendSpec)
    deploy: DeploySpec = Field(default_factory=DeploySpec)


def spec_dir(spec_path: Path) -> Path:
    return spec_path.resolve().parent


CONTAINER_MODEL_ROOT = "/models"
CONTAINER_CONFIG_DIR = "/config"


def model_repository_dir(spec: StackSpecFields, spec_path: Path) -> Path:
    """The host directory mounted read-only at /models (relative to the spec's folder)."""
    root = Path(spec.model_repository)
    return root if root.is_absolute() else (spec_dir(spec_path) / root).resolve()


def model_relative_path(model: ModelSpec) -> str:
    """The model's directory relative to the model repository (its name unless `path` says)."""
    return model.path if model.path is not None else model.name


def model_host_dir(spec: StackSpecFields, spec_path: Path, model: ModelSpec) -> Path:
    """Where the model's numbered version directories live on the host."""
    relative = Path(model_relative_path(model))
    if relative.is_absolute():
        return relative
    return (model_repository_dir(spec, spec_path) / relative).resolve()


def model_base_path(model: ModelSpec) -> str:
    """The model's base_path inside the server container (what models.config says)."""
    relative = Path(model_relative_path(model))
    if relative.is_absolute():
        # Models outside the repository get their own mount at /models/<name>.
        return f"{CONTAINER_MODEL_ROOT}/{model.name}"
    return f"{CONTAINER_MODEL_ROOT}/{relative.as_posix()}"


def sample_body(sample: SampleRequest, spec_path: Path) -> dict[str, Any]:
    """The JSON body of a spec sample: inline, or read from ``body_file`` beside the spec."""
    if sample.body is not None:
        return dict(sample.body)
    assert sample.body_file is not None
    path = spec_dir(spec_path) / sample.body_file
    body = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(body, dict):
        raise StackError(f"{path}: a sample body must be a JSON object")
    return body
