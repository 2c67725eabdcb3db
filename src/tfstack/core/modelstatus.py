"""TF Serving's model status as tfstack reads it: one entry of ``model_version_status``.

Shared by the clients (``tfstack.serving``) and the temporary containers' readiness wait
(``tfstack.docker``), which sit on layers that may not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VersionState:
    """One entry of TF Serving's model_version_status."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code not in ("OK", "", "0")


def parse_version_status(document: Mapping[str, Any]) -> list[VersionState]:
    """``{"model_version_status": [...]}`` from REST → VersionState list sorted by version."""
    states: list[VersionState] = []
    for entry in document.get("model_version_status") or []:
        status = entry.get("status") or {}
        states.append(
            VersionState(
                version=int(entry.get("version", 0)),
                state=str(entry.get("state", "UNKNOWN")),
                error_code=str(status.get("error_code", "OK")),
                error_message=str(status.get("error_message", "")),
            )
        )
    return sorted(states, key=lambda s: s.version)
