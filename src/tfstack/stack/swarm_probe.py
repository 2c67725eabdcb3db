"""The per-task probe of the Swarm target: a short-lived container on the stack's overlay network.

Tasks have addresses only on the overlay, so tfstack asks them from inside it: one container of the
serving image (already on the nodes) runs :data:`PROBE_SCRIPT`, which resolves ``tasks.serving``
(every task, never the balancer), asks each task's REST status API for every model and for the
version each expected label resolves to, and prints one JSON document. Pure parsing lives here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROBE_SCRIPT = r"""
import json, socket, sys, urllib.request
service, port, models = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
wanted = sys.argv[4] if len(sys.argv) > 4 else ""
labels = [item.split(":", 1) for item in wanted.split(",") if item]
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
        except (OSError, ValueError, KeyError) as exc:  # no answer or a bad one: report it
            row[model] = {"error": str(exc)[:200]}
    resolved = {}
    for model, label in labels:
        url = f"http://{ip}:{port}/v1/models/{model}/labels/{label}"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                status = json.load(r).get("model_version_status", [])
            version = int(status[0]["version"]) if status else None
        except (OSError, ValueError, KeyError, IndexError):  # 4xx or no answer: not resolving
            version = None
        resolved.setdefault(model, {})[label] = version
    out[ip] = {"models": row, "labels": resolved}
print(json.dumps({"tasks": out}))
"""


@dataclass(frozen=True)
class TaskModels:
    """What one task address serves: model -> version -> state (or an error)."""

    address: str
    versions: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict)

    def missing(
        self,
        expected: Mapping[str, Sequence[int]],
        labels: Mapping[str, Mapping[str, int]] | None = None,
    ) -> list[str]:
        """What this task does not serve yet (``model vN STATE``, ``model label->N (now M)``),
        empty when it serves every expected version and resolves every expected label."""
        gaps: list[str] = []
        for model, wanted in sorted((labels or {}).items()):
            for label, version in sorted(wanted.items()):
                seen = self.labels.get(model, {}).get(label)
                if seen != version:
                    now = "unset" if seen is None else seen
                    gaps.append(f"{model} label {label}->{version} (now {now})")
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
        for model, states in row.get("models", {}).items():
            if "error" in states:
                errors[model] = str(states["error"])
            else:
                versions[model] = {int(v): str(s) for v, s in states.items()}
        labels = {
            model: {label: None if v is None else int(v) for label, v in resolved.items()}
            for model, resolved in row.get("labels", {}).items()
        }
        tasks.append(TaskModels(address, versions, errors, labels))
    return tasks, None
