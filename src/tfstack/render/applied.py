"""The models.config the running server last accepted (at start or by reload), per project root.

``up`` compares it with the freshly rendered one to choose between noop, reload and recreate; a
rollout records it after every reload it sends.
"""

from __future__ import annotations

from pathlib import Path

from tfstack.core.files import write_files_atomically

APPLIED_CONFIG = "state/applied-models.config"
"""The models.config the running server last accepted (at start or by reload), per project root."""


def applied_config_path(root: Path) -> Path:
    return root / APPLIED_CONFIG


def read_applied(root: Path) -> str | None:
    try:
        return applied_config_path(root).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def record_applied(root: Path, text: str) -> None:
    write_files_atomically(root, {APPLIED_CONFIG: text})


def forget_applied(root: Path) -> None:
    applied_config_path(root).unlink(missing_ok=True)
