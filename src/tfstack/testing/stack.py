"""A whole spec brought up for a test: ``StackHandle`` and the up/down around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfstack.serving.client import GrpcClient, RestClient
from tfstack.serving.endpoints import endpoints_for
from tfstack.spec import StackSpec, load_spec
from tfstack.stack.lifecycle import Lifecycle, UpReport
from tfstack.testing.container import ServingCalls

DEFAULT_STACK_TIMEOUT_S = 300.0


class StackHandle(ServingCalls):
    """A running stack: its spec, the ``up`` report, endpoints and the kit's calls
    (``predict``, ``classify``, ``regress``, ``metadata``) against its front ports."""

    def __init__(self, lifecycle: Lifecycle, spec: StackSpec, report: UpReport) -> None:
        self.lifecycle = lifecycle
        self.spec = spec
        self.report = report
        self.endpoints = endpoints_for(spec)
        self._rest: RestClient | None = None
        self._grpc: GrpcClient | None = None

    @property
    def rest_url(self) -> str:
        return self.endpoints.rest_url

    @property
    def grpc_target(self) -> str:
        return self.endpoints.grpc_target

    @property
    def rest(self) -> RestClient:
        if self._rest is None:
            self._rest = RestClient(self.rest_url)
        return self._rest

    @property
    def grpc(self) -> GrpcClient:
        if self._grpc is None:
            self._grpc = GrpcClient(self.grpc_target)
        return self._grpc

    def down(self) -> list[str]:
        """Close the clients and bring the stack down (removes its containers and network)."""
        if self._rest is not None:
            self._rest.close()
            self._rest = None
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None
        return self.lifecycle.down()


def stack_up(
    spec_path: str | Path,
    *,
    timeout: float = DEFAULT_STACK_TIMEOUT_S,
    say: Any = None,
    **lifecycle_kwargs: Any,
) -> StackHandle:
    """Bring the spec's stack up with tfstack's lifecycle (render, images, start, wait for every
    model); if that fails the stack is brought down before the error propagates."""
    path = Path(spec_path).resolve()
    spec = load_spec(path)  # bad specs fail here, with their YAML paths, before Docker
    kwargs = dict(lifecycle_kwargs)
    if say is not None:
        kwargs["say"] = say
    lifecycle = Lifecycle(path, **kwargs)
    try:
        report = lifecycle.up(timeout=timeout)
    except BaseException:
        lifecycle.down()
        raise
    return StackHandle(lifecycle, spec, report)
