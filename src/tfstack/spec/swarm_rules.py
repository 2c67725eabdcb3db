"""Can this stack run on a Docker Swarm as written? Problems named by YAML path, before rendering.

Pure: the spec in, :class:`~tfstack.errors.SpecProblem` out (validate adds the line numbers).
Placement against the real nodes (replicas versus nodes and ``max_replicas_per_node``) is checked
when deploying, where the nodes are known (:mod:`tfstack.stack.swarm`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tfstack.errors import SpecProblem
from tfstack.spec.deploy import SWARM_YAML_ROOT
from tfstack.spec.model import StackSpecFields

_CONSTRAINT = re.compile(r"^(node|engine)\.[A-Za-z0-9_.-]+\s*(==|!=)\s*\S+$")


def _path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def check_swarm(
    spec: StackSpecFields, file: str, line_at: Callable[[tuple[str | int, ...]], int | None]
) -> list[SpecProblem]:
    """Every reason the spec cannot be deployed as a Swarm stack."""
    found: list[SpecProblem] = []

    def problem(loc: tuple[str | int, ...], message: str, hint: str) -> None:
        found.append(
            SpecProblem(
                file=file, yaml_path=_path(loc), message=message, line=line_at(loc), hint=hint
            )
        )

    swarm = spec.deploy.swarm
    for index, constraint in enumerate(swarm.constraints):
        if not _CONSTRAINT.match(constraint):
            problem(
                (*SWARM_YAML_ROOT, "constraints", index),
                f"{constraint!r} is not a Swarm placement constraint",
                "write node.<attribute>==<value> or !=, e.g. node.labels.models==yes",
            )
    frontend = spec.frontend
    if frontend.enabled is False:
        problem(
            ("frontend", "enabled"),
            "the swarm target needs the front door: it owns the published ports",
            "remove frontend.enabled (auto) or set it to true",
        )
    for key in ("tls", "auth"):
        if getattr(frontend, key) is not None:
            problem(
                ("frontend", key),
                f"frontend.{key} is not supported on the swarm target yet (no Swarm secrets)",
                "remove it for swarm, or terminate TLS / check keys in front of the stack",
            )
    return found
