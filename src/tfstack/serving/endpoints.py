"""Where to reach a stack's server from this host."""

from __future__ import annotations

from tfstack.serving.client import Endpoints
from tfstack.spec import StackSpecFields


def endpoints_for(spec: StackSpecFields) -> Endpoints:
    """Where to reach the stack from this host (a wildcard bind is reached on 127.0.0.1)."""
    host = spec.serving.bind_address
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return Endpoints(host, spec.serving.rest_port, spec.serving.grpc_port)
