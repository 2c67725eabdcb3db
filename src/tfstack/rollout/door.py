"""A rollout behind the front door: every replica reached directly, the door asked like a client.

A step's reload goes to each replica at its own address (a reload through the balancer would reach
one replica only), one replica after another; when a replica left the door's rotation while it
loaded a version, the next one is reloaded only once the door has it back
(:func:`~tfstack.serving.door.wait_replica_in_rotation`). After the step, every label it sets is
asked through the door as a client would ask it (over TLS and with an API key when the spec has
them), a few times per replica: the labels are on every replica before ``rollout`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tfstack.docker.compose import ContainerInfo, Replica
from tfstack.errors import RolloutError, UsageError
from tfstack.render.frontdoor import SERVING_SERVICE
from tfstack.serving.client import ModelRef, RestClient, ServingRequestError
from tfstack.serving.door import (
    DoorAccess,
    direct_replicas,
    door_access,
    door_view,
    wait_replica_in_rotation,
)
from tfstack.spec import SampleRequest, StackSpec

ASKS_PER_REPLICA = 2
"""How often each label is asked through the door per replica (least connections spreads them)."""


def replicas_behind_door(
    client: Any, spec: StackSpec, containers: Sequence[ContainerInfo], *, model: str
) -> list[Replica]:
    """Every running replica at its network address; RolloutError when none runs."""
    found = direct_replicas(
        client,
        [c for c in containers if c.service == SERVING_SERVICE],
        rest_port=spec.serving.rest_port,
        grpc_port=spec.serving.grpc_port,
    )
    if not found:
        raise RolloutError(
            "no serving replica of the stack runs behind its front door",
            model=model,
            hint="start the stack with `invoke up`",
        )
    return found


def await_rotation(
    client: Any,
    containers: Callable[[], Sequence[ContainerInfo]],
    spec: StackSpec,
    replica: Replica,
    *,
    timeout: float,
) -> None:
    """Until the door has ``replica`` in rotation again (after its reload)."""
    wait_replica_in_rotation(
        lambda: door_view(client, containers(), stats_port=spec.frontend.stats_port),
        replica.name,
        timeout=timeout,
    )


def ask_labels_through_door(
    spec: StackSpec,
    spec_path: Path,
    model: str,
    labels: Mapping[str, int],
    samples: Sequence[tuple[SampleRequest, Mapping[str, Any]]],
    *,
    replicas: int,
    step: str,
    access: DoorAccess | None = None,
) -> str:
    """Every label asked through the door ``ASKS_PER_REPLICA`` x ``replicas`` times (the first
    sample's predict, or the label's model status without samples); RolloutError on a refusal."""
    if not labels:
        return ""
    if access is None:
        try:
            access = door_access(spec, spec_path)
        except UsageError as exc:
            return f"labels not asked through the door ({exc.message})"
    asks = ASKS_PER_REPLICA * max(replicas, 1)
    problems: list[str] = []
    with access.rest() as rest:
        for label in sorted(labels):
            ref = ModelRef(model, label=label)
            for _ in range(asks):
                try:
                    _ask(rest, ref, samples)
                except ServingRequestError as exc:
                    problems.append(f"label {label}: {exc.message}")
                    break
    if problems:
        raise RolloutError(
            "the front door refused a label the step set on every replica",
            model=model,
            step=step,
            evidence=problems,
            hint="`invoke status` shows which replicas the door has in rotation",
        )
    names = ", ".join(sorted(labels))
    return f"label{'s' if len(labels) > 1 else ''} {names} asked {asks}x through the door"


def _ask(
    rest: RestClient, ref: ModelRef, samples: Sequence[tuple[SampleRequest, Mapping[str, Any]]]
) -> None:
    if samples:
        sample, body = samples[0]
        rest.predict(ref, body, method=sample.method, signature=sample.signature_name)
    else:
        rest.model_status(ref)
