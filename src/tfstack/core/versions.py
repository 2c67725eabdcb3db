"""Version directories under a model base path, by TF Serving's rule.

TF Serving serves a child directory of a model's base path as a version when its name is ASCII
digits only and the value fits in int64; the version is the integer, so ``00000123`` is version
123. Anything else is ignored. tfstack reasons in version numbers but always uses a directory's
real name for paths (never ``base / str(version)``): ``007`` stays ``007``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

INT64_MAX = 2**63 - 1


@dataclass(frozen=True, order=True)
class VersionDir:
    """One version directory: the version TF Serving reads from it and its name on disk."""

    version: int
    name: str


def parse_version(name: str) -> int | None:
    """The version a directory called ``name`` holds, or None when TF Serving ignores it."""
    if not name or not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if version <= INT64_MAX else None


def version_dirs(base_path: Path) -> tuple[VersionDir, ...]:
    """Version directories under ``base_path``, sorted by version then name (OSError if unreadable).

    Two names for one version (``7`` and ``007``) both appear; see :func:`duplicate_versions`.
    """
    found: list[VersionDir] = []
    with os.scandir(base_path) as entries:
        for entry in entries:
            version = parse_version(entry.name)
            if version is not None and entry.is_dir():
                found.append(VersionDir(version, entry.name))
    return tuple(sorted(found))


def duplicate_versions(dirs: Iterable[VersionDir]) -> Mapping[int, tuple[str, ...]]:
    """Versions with more than one directory, each with its directory names (sorted)."""
    names: dict[int, list[str]] = {}
    for found in dirs:
        names.setdefault(found.version, []).append(found.name)
    return {v: tuple(sorted(n)) for v, n in sorted(names.items()) if len(n) > 1}


def dirs_of_version(dirs: Iterable[VersionDir], version: int) -> tuple[str, ...]:
    """Every directory name holding ``version`` (none, one, or several when duplicated)."""
    return tuple(sorted(found.name for found in dirs if found.version == version))


def name_for_new_version(dirs: Sequence[VersionDir], version: int) -> str:
    """The directory name for a new ``version``, in the style the model already uses.

    Zero-padded when the existing directories are (``00000124`` beside ``00000123``), at their
    widest padding; plain digits otherwise.
    """
    padded = [found.name for found in dirs if len(found.name) > 1 and found.name.startswith("0")]
    if not padded:
        return str(version)
    return str(version).zfill(max(len(name) for name in padded))
