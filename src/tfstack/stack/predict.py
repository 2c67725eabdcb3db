"""``invoke predict`` / ``inspect``: one request to a running stack, body from the command line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfstack.errors import StackError, UsageError
from tfstack.serving.client import (
    Endpoints,
    GrpcClient,
    ModelRef,
    RestClient,
)
from tfstack.serving.endpoints import endpoints_for
from tfstack.spec import load_spec
from tfstack.stack.plan import project_root_for


def parse_data(data: str, *, cwd: Path | None = None) -> dict[str, Any]:
    """``--data``: a JSON object, or ``@file`` naming a JSON file (relative to ``cwd``)."""

    text = data
    if data.startswith("@"):
        path = Path(data[1:])
        if not path.is_absolute() and cwd is not None:
            path = cwd / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--data {data}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--data is not valid JSON: {exc}",
            hint="give a request body such as '{\"instances\": [1.0, 2.0]}' or @file.json",
        ) from exc
    if not isinstance(body, dict):
        raise UsageError('--data must be a JSON object such as {"instances": [...]}')
    return body


def _spec_endpoints(spec_path: Path, root: Path | None) -> Endpoints:
    spec = load_spec(spec_path, check_disk=False, project_root=root or project_root_for(spec_path))
    return endpoints_for(spec)


def predict(
    spec_path: Path,
    ref: ModelRef,
    body: Mapping[str, Any],
    *,
    grpc: bool = False,
    signature: str | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """One predict request to the stack the spec describes (REST, or gRPC with ``grpc``)."""
    endpoints = _spec_endpoints(spec_path, root)
    try:
        if grpc:
            with GrpcClient(endpoints.grpc_target) as grpc_client:
                return grpc_client.predict_json(ref, body, signature=signature)
        with RestClient(endpoints.rest_url) as rest:
            return rest.predict(ref, body, signature=signature)
    except (OSError, ConnectionError) as exc:
        raise StackError(
            f"cannot reach the stack at {endpoints.rest_url}: {exc}",
            hint="start it with `invoke up`",
        ) from exc


def inspect(
    spec_path: Path, model: str, *, grpc: bool = False, root: Path | None = None
) -> dict[str, Any]:
    """The server's metadata for a model (REST or gRPC); format with ``format_signatures``."""
    endpoints = _spec_endpoints(spec_path, root)
    ref = ModelRef(model)
    try:
        if grpc:
            with GrpcClient(endpoints.grpc_target) as grpc_client:
                return grpc_client.metadata(ref)
        with RestClient(endpoints.rest_url) as rest:
            return rest.metadata(ref)
    except (OSError, ConnectionError) as exc:
        raise StackError(
            f"cannot reach the stack at {endpoints.rest_url}: {exc}",
            hint="start it with `invoke up`",
        ) from exc
