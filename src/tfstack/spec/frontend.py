"""The ``frontend`` section of the spec: the front door (HAProxy) in front of the serving replicas.

With the door on, the frontend container owns the published ``serving.rest_port`` and
``serving.grpc_port`` and balances REST (HTTP/1.1) and gRPC (HTTP/2) over the replicas, which then
publish nothing. Secrets (the TLS key, the API keys) are named by path only: they are mounted
read-only into the frontend and never copied into the spec's rendered files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FRONTEND_IMAGE = "tfstack/frontend:latest"
HASHED_KEY_PREFIX = "sha256:"
"""A line ``sha256:<64 hex>`` in the API keys file holds the SHA-256 of a key, not the key."""
# Ports inside the frontend container (published on the spec's rest_port/grpc_port): fixed and
# above 1024 because HAProxy runs without privileges.
CONTAINER_REST_PORT = 8501
CONTAINER_GRPC_PORT = 8500


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class FrontendTLS(_Frozen):
    """TLS on both published ports; the files stay where they are (mounted read-only)."""

    cert_file: str = Field(
        description="PEM certificate (leaf first, then any chain); relative to the spec."
    )
    key_file: str = Field(
        description="PEM private key matching cert_file (unencrypted); relative to the spec."
    )


class FrontendAuth(_Frozen):
    """API keys checked at the door (REST ``Authorization: Bearer``, gRPC ``authorization``)."""

    api_keys_file: str = Field(
        description="One key per line, or `sha256:<hex>` of a key; `#` comments and blank "
        "lines ignored; relative to the spec. Mounted read-only, never copied."
    )


class FrontendSpec(_Frozen):
    """The front door: one REST and one gRPC endpoint balancing over the serving replicas."""

    enabled: Literal["auto"] | bool = Field(
        default="auto",
        description="auto: on when serving.replicas > 1; true/false force it either way.",
    )
    image: str = FRONTEND_IMAGE
    tls: FrontendTLS | None = None
    auth: FrontendAuth | None = None
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=4096, description="Concurrent client connections the door accepts."
    )
    max_connections_per_replica: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=64,
        description="Concurrent requests sent to one replica; more wait in the door's queue.",
    )
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=3,
        description="Attempts after a connection failure or empty response, on another replica.",
    )
    health_interval_ms: Annotated[int, Field(ge=100, le=60_000)] = Field(
        default=1000, description="How often the door asks each replica whether it is ready."
    )
    stats_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8404,
        description="Stats and Prometheus page inside the frontend container (not published).",
    )
    threads: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None, description="HAProxy threads (default: one per CPU the container sees)."
    )


def frontend_enabled(frontend: FrontendSpec, replicas: int) -> bool:
    """Whether the stack has a door: forced by ``enabled``, or ``auto`` with several replicas."""
    if frontend.enabled == "auto":
        return replicas > 1
    return bool(frontend.enabled)


def frontend_file(spec_path: Path, name: str) -> Path:
    """A frontend file named in the spec (relative to the spec's folder, or absolute)."""
    path = Path(name)
    return path if path.is_absolute() else (spec_path.resolve().parent / path)
