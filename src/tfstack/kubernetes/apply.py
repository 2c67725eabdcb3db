"""Write ``deploy/kubernetes/`` atomically: the one side effect of the Kubernetes render.

Every file changes or none does (:func:`tfstack.core.files.write_files_atomically`); a generated
file the new render no longer produces (an Ingress or HPA switched off) is deleted, files a person
added to the folder are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tfstack.core.files import FileChange, format_plan, plan_files, write_files_atomically
from tfstack.kubernetes.manifests import KUBERNETES_DIR, KubernetesManifests
from tfstack.render import GENERATED_MARKER


@dataclass(frozen=True)
class KubernetesWriteReport:
    """What a write did (or, with dry_run, would do)."""

    changes: list[FileChange]
    written: list[str]
    dry_run: bool

    def text(self) -> str:
        return format_plan(self.changes)


def stale_manifests(manifests: KubernetesManifests, root: Path) -> list[str]:
    """Generated YAML files in ``deploy/kubernetes/`` that this render no longer produces."""
    directory = root / KUBERNETES_DIR
    if not directory.is_dir():
        return []
    stale: list[str] = []
    for candidate in sorted(directory.glob("*.yaml")):
        path = f"{KUBERNETES_DIR}/{candidate.name}"
        if path in manifests.files or not candidate.is_file():
            continue
        with candidate.open("r", encoding="utf-8", errors="replace") as handle:
            if GENERATED_MARKER in handle.readline():
                stale.append(path)
    return stale


def write_kubernetes(
    manifests: KubernetesManifests, root: Path, *, dry_run: bool = False
) -> KubernetesWriteReport:
    """Plan the changes under ``root``, then (unless ``dry_run``) write them all or none."""
    remove = stale_manifests(manifests, root)
    changes = plan_files(root, manifests.files, remove=remove)
    written = [] if dry_run else write_files_atomically(root, manifests.files, remove=remove)
    return KubernetesWriteReport(changes=changes, written=written, dry_run=dry_run)
