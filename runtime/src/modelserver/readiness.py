"""``GET /readyz``: 200 only while every model of the current config serves what it declares.

The rule is the probe's (:func:`modelserver.probe.missing`): a ``specific`` policy needs each
listed version AVAILABLE, ``latest``/``all`` at least one AVAILABLE version, and every version
label must point at an AVAILABLE version. Unlike the probe, which reads the config file given at
start, this reads the manager's current config, so it follows hot reloads. A load balancer (the
tfstack front door) sends traffic to a replica only while this answers 200; a replica loading,
reloading or restarting answers 503 (or not at all) and is skipped.
"""

from __future__ import annotations

import json

from modelserver.manager import ModelManager
from modelserver.probe import DeclaredModel, missing

READY_PATH = "/readyz"
JSON = b"application/json"


def _declared(manager: ModelManager) -> list[tuple[DeclaredModel, set[int]]]:
    """Each configured model as the probe declares it, with its AVAILABLE versions now."""
    found: list[tuple[DeclaredModel, set[int]]] = []
    for model in manager.configured():
        policy = model.config.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        declared = DeclaredModel(
            model.name,
            policy=kind,
            versions=list(policy.specific.versions) if kind == "specific" else [],
            labels=dict(model.labels),
        )
        found.append((declared, set(model.available)))
    return found


def readiness_problems(manager: ModelManager) -> list[str]:
    """What keeps this server from being ready (empty when ready)."""
    declared = _declared(manager)
    if not declared:
        return ["no model is configured"]
    problems: list[str] = []
    for model, available in declared:
        problems += missing(model, available)
    return problems


def ready_answer(manager: ModelManager) -> tuple[int, bytes, bytes]:
    """(status, content type, body): 200 ``{"ready": true}`` or 503 with what is missing."""
    problems = readiness_problems(manager)
    body = {"ready": not problems, "problems": problems}
    return (503 if problems else 200), JSON, json.dumps(body).encode("utf-8")
