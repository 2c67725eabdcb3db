"""The per-task probe of the Swarm target: a short-lived container on the stack's overlay network.

Tasks have addresses only on the overlay, so tfstack asks them from inside it: one container of the
serving image (already on the nodes) runs :data:`PROBE_SCRIPT`, which resolves ``tasks.serving``
(every task, never the balancer), asks each task's REST status API for every model and prints one
JSON document. Pure parsing lives here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROBE_SCRIPT = r"""
import json, socket, sys, urllib.request
service, port, models = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
try:
    found = socket.getaddrinfo("tasks." + service, port, socket.AF_INET)
    addresses = sorted({a[4][0] for a in found})
except OSError as exc:
    print(json.dumps({"error": f"tasks.{service} does not resolve: {exc}"})); sys.exit(0)
out = {}
for ip in addresses:
    row = {}
    for model in models:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/v1/models/{model}", timeout=3) as r:
                doc = json.load(r)
            status = doc.get("model_version_status", [])
            row[model] = {str(s["version"]): s["state"] for s in status}
        except Exception as exc:  # every failure is a state to report, never a crash
            row[model] = {"error": str(exc)[:200]}
    out[ip] = row
print(json.dumps({"tasks": out}))
"""


@dataclass(frozen=True)
class TaskModels:
    """What one task address serves: model -> version -> state (or an error)."""

    address: str
    versions: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)

    def missing(self, expected: Mapping[str, Sequence[int]]) -> list[str]:
        """What this task does not serve yet (``model vN STATE``), empty when it serves all."""
        gaps: list[str] = []
        for model, versions in expected.items():
            if model in self.errors:
                gaps.append(f"{model}: {self.errors[model]}")
                continue
            states = self.versions.get(model, {})
            gaps += [
                f"{model} v{v} {states.get(v, 'not seen')}"
                for v in versions
                if states.get(v) != "AVAILABLE"
            ]
        return gaps


def parse_probe(text: str) -> tuple[list[TaskModels], str | None]:
    """The probe's JSON -> per-task models, or an error message."""
    try:
        document: Any = json.loads(text.strip().splitlines()[-1] if text.strip() else "{}")
    except json.JSONDecodeError:
        return [], f"the probe printed no JSON: {text.strip()[-200:]}"
    if "error" in document:
        return [], str(document["error"])
    tasks: list[TaskModels] = []
    for address, row in sorted(document.get("tasks", {}).items()):
        versions: dict[str, dict[int, str]] = {}
        errors: dict[str, str] = {}
        for model, states in row.items():
            if "error" in states:
                errors[model] = str(states["error"])
            else:
                versions[model] = {int(v): str(s) for v, s in states.items()}
        tasks.append(TaskModels(address, versions, errors))
    return tasks, None
