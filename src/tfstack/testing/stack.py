"""A whole spec brought up for a test: ``StackHandle`` and the up/down around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

    @property
    def rest_url(self) -> str:
        return self.endpoints.rest_url

    @property
    def grpc_target(self) -> str:
        return self.endpoints.grpc_target

    def down(self) -> list[str]:
        """Close the clients and bring the stack down (removes its containers and network)."""
        self.close_clients()
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
