"""``invoke predict`` / ``inspect``: one request to a running stack, body from the command line.

Through a front door with TLS the request goes over https / a TLS channel checked against
``--ca-file`` or the spec's own ``frontend.tls.cert_file``; with API keys it carries
``Authorization: Bearer <key>`` (gRPC metadata ``authorization``), the key from ``--api-key`` or
the first plain key of ``frontend.auth.api_keys_file``. A key is never printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tfstack.errors import StackError, UsageError
from tfstack.serving.client import ModelRef, ServingRequestError
from tfstack.serving.door import DoorAccess, door_access
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


def _spec_access(
    spec_path: Path, root: Path | None, api_key: str | None, ca_file: Path | None
) -> DoorAccess:
    spec = load_spec(spec_path, check_disk=False, project_root=root or project_root_for(spec_path))
    return door_access(spec, spec_path, api_key=api_key, ca_file=ca_file)


@contextmanager
def _reported(access: DoorAccess) -> Iterator[None]:
    """Connection, TLS and key refusals as errors that say what to do."""
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise StackError(
            f"TLS with {access.rest_url} failed: the certificate is not trusted or does not "
            f"name {access.endpoints.host} ({type(exc).__name__})",
            hint=f"pass the CA that signed the door's certificate with --ca-file (now: "
            f"{access.ca_file})",
        ) from exc
    except ServingRequestError as exc:
        if exc.status == 401 or exc.code == "UNAUTHENTICATED":
            raise ServingRequestError(
                f"{exc.message}: the front door refused the API key"
                + ("" if access.api_key else " (none was sent)"),
                status=exc.status,
                code=exc.code,
                hint="pass a key listed in frontend.auth.api_keys_file with --api-key",
            ) from exc
        raise
    except (OSError, ConnectionError) as exc:
        raise StackError(
            f"cannot reach the stack at {access.rest_url}: {exc}",
            hint="start it with `invoke up`",
        ) from exc


def predict(
    spec_path: Path,
    ref: ModelRef,
    body: Mapping[str, Any],
    *,
    grpc: bool = False,
    signature: str | None = None,
    root: Path | None = None,
    api_key: str | None = None,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    """One predict request to the stack the spec describes (REST, or gRPC with ``grpc``)."""
    access = _spec_access(spec_path, root, api_key, ca_file)
    with _reported(access):
        if grpc:
            with access.grpc() as grpc_client:
                return grpc_client.predict_json(ref, body, signature=signature)
        with access.rest() as rest:
            return rest.predict(ref, body, signature=signature)


def inspect(
    spec_path: Path,
    model: str,
    *,
    grpc: bool = False,
    root: Path | None = None,
    api_key: str | None = None,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    """The server's metadata for a model (REST or gRPC); format with ``format_signatures``."""
    access = _spec_access(spec_path, root, api_key, ca_file)
    ref = ModelRef(model)
    with _reported(access):
        if grpc:
            with access.grpc() as grpc_client:
                return grpc_client.metadata(ref)
        with access.rest() as rest:
            return rest.metadata(ref)
