"""Staging a new model version: copy (or export) beside the served versions, check, rename.

TF Serving's file-system poll loads any child of a model directory whose name is a number, even
half-copied. So a new version is built under a dot-name (``.tfstack-staging-<N>-<pid>``, which the
server and ``tfstack.spec.load`` ignore), fsynced, checked, and only then renamed to ``<N>``
(zero-padded like the versions beside it, if they are) in one ``rename(2)``. Existing versions are
found under their real names (``tfstack.core.versions``). Removal works the other way round: rename
away first, delete after.

Checks before the rename:

- the directory is a SavedModel (``saved_model.pb`` parses, a ``serve`` meta graph exists, its
  variables index is there when it has variables);
- its serving signatures are compatible with the version clients use now: every signature of the
  current version exists with the same method, input and output names and dtypes, and shapes that
  agree wherever both give a size (``-1`` and unknown rank agree with anything). New signatures are
  fine. ``--allow-signature-change`` turns incompatibilities into warnings.

Whether the graph really loads is proven by the side instance (:mod:`tfstack.rollout.verify`),
which runs the same server image as production.

Keras files (``.keras``, ``.h5``) are exported to a SavedModel with a ``serving_default``
signature first, in a subprocess (Keras and TensorFlow state stay out of the caller).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from tfstack.core.files import fsync_path, fsync_tree
from tfstack.core.progress import Say
from tfstack.core.versions import dirs_of_version, name_for_new_version, version_dirs
from tfstack.errors import RolloutError

STAGING_PREFIX = ".tfstack-staging-"
REMOVING_PREFIX = ".tfstack-removing-"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SERVE_TAG = "serve"
EXPORT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TensorInfo:
    """dtype name (``DT_FLOAT``) and shape (None = unknown rank; -1 = unknown size)."""

    dtype: str
    shape: tuple[int, ...] | None

    def describe(self) -> str:
        shape = "unknown rank" if self.shape is None else str(list(self.shape))
        return f"{self.dtype} {shape}"


@dataclass(frozen=True)
class Signature:
    method: str
    inputs: Mapping[str, TensorInfo] = field(default_factory=dict)
    outputs: Mapping[str, TensorInfo] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Signatures (pure comparison; reading parses saved_model.pb)


def shapes_compatible(old: tuple[int, ...] | None, new: tuple[int, ...] | None) -> bool:
    """Same rank and equal sizes wherever both are known (unknown rank matches anything)."""
    if old is None or new is None:
        return True
    if len(old) != len(new):
        return False
    return all(a == b or a < 0 or b < 0 for a, b in zip(old, new, strict=True))


def signature_problems(old: Mapping[str, Signature], new: Mapping[str, Signature]) -> list[str]:
    """Why clients of ``old`` would break on ``new`` ([] when compatible)."""
    problems: list[str] = []
    for key in sorted(old):
        if key not in new:
            problems.append(
                f"signature {key!r} is gone (new signatures: {', '.join(sorted(new)) or 'none'})"
            )
            continue
        before, after = old[key], new[key]
        if before.method != after.method:
            problems.append(f"signature {key!r}: method {before.method!r} became {after.method!r}")
        for kind, old_side, new_side in (
            ("input", before.inputs, after.inputs),
            ("output", before.outputs, after.outputs),
        ):
            missing = sorted(set(old_side) - set(new_side))
            extra = sorted(set(new_side) - set(old_side))
            if missing or extra:
                problems.append(
                    f"signature {key!r}: {kind} names differ: current {sorted(old_side)}, "
                    f"new {sorted(new_side)}"
                )
            for name in sorted(set(old_side) & set(new_side)):
                a, b = old_side[name], new_side[name]
                if a.dtype != b.dtype:
                    problems.append(
                        f"signature {key!r}: {kind} {name!r} dtype {a.dtype} became {b.dtype}"
                    )
                elif not shapes_compatible(a.shape, b.shape):
                    problems.append(
                        f"signature {key!r}: {kind} {name!r} shape {a.describe()} is not "
                        f"compatible with {b.describe()}"
                    )
    return problems


def _tensor_info(info: Any) -> TensorInfo:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    dtype = types_pb2.DataType.Name(info.dtype)
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
    return TensorInfo(dtype, dims)


def read_signatures(version_dir: Path) -> dict[str, Signature]:
    """The ``serve`` meta graph's signatures of the SavedModel in ``version_dir``.

    Raises RolloutError (step ``stage``) when it is not a readable SavedModel.
    """
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    pb = version_dir / "saved_model.pb"
    try:
        data = pb.read_bytes()
    except FileNotFoundError as exc:
        if (version_dir / "saved_model.pbtxt").is_file():
            raise _bad(
                version_dir, "saved_model.pbtxt is not supported; export a binary saved_model.pb"
            ) from exc
        raise _bad(version_dir, f"{pb} does not exist: not a SavedModel directory") from exc
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(data)
    except DecodeError as exc:
        raise _bad(version_dir, f"{pb} does not parse as a SavedModel: {exc}") from exc
    graphs = [g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        tags = [list(g.meta_info_def.tags) for g in saved.meta_graphs]
        raise _bad(version_dir, f"no meta graph tagged 'serve' (tags found: {tags})")
    signatures: dict[str, Signature] = {}
    for key, definition in graphs[0].signature_def.items():
        if key.startswith("__"):  # e.g. __saved_model_init_op
            continue
        signatures[key] = Signature(
            definition.method_name,
            {name: _tensor_info(t) for name, t in definition.inputs.items()},
            {name: _tensor_info(t) for name, t in definition.outputs.items()},
        )
    if not signatures:
        raise _bad(version_dir, "the SavedModel has no serving signature")
    return signatures


def layout_problems(version_dir: Path) -> list[str]:
    """File-level problems a server would hit when loading (cheap, before any load)."""
    problems: list[str] = []
    variables = version_dir / "variables"
    if variables.is_dir():
        if not (variables / "variables.index").is_file():
            problems.append(f"{variables} has no variables.index")
        if not any(variables.glob("variables.data-*")):
            problems.append(f"{variables} has no variables.data-* shard")
    return problems


def _bad(version_dir: Path, message: str) -> RolloutError:
    return RolloutError(
        f"{version_dir}: {message}",
        model=version_dir.parent.name,
        step="stage",
        hint="export the model with tf.saved_model.save (or a Keras .keras/.h5 file) and pass "
        "its directory with --source",
    )


# --------------------------------------------------------------------------------------------
# Files


def staging_dir(model_dir: Path, version: int) -> Path:
    return model_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}-{secrets.token_hex(3)}"


def copy_tree(source: Path, target: Path) -> None:
    """Copy a SavedModel directory (symlinks followed), readable by the server's non-root user."""
    shutil.copytree(source, target, symlinks=False)
    copy_fix_modes(target)


def existing_version_dir(model_dir: Path, version: int, *, model: str = "") -> Path | None:
    """The directory holding ``version`` under its real name (``7`` or ``007``), None if absent.

    RolloutError when two directories both hold it: TF Serving would serve one of them.
    """
    try:
        dirs = version_dirs(model_dir)
    except FileNotFoundError:
        return None
    names = dirs_of_version(dirs, version)
    if len(names) > 1:
        raise RolloutError(
            f"directories {' and '.join(repr(n) for n in names)} in {model_dir} are both "
            f"version {version}",
            model=model or model_dir.name,
            version=version,
            step="stage",
            hint="remove one of them",
        )
    return model_dir / names[0] if names else None


def remove_version_dir(model_dir: Path, version: int) -> bool:
    """Make ``version``'s directory disappear at once (rename to a dot-name), then delete it."""
    target = existing_version_dir(model_dir, version)
    if target is None:
        return False
    doomed = model_dir / f"{REMOVING_PREFIX}{version}-{secrets.token_hex(3)}"
    os.rename(target, doomed)
    fsync_path(model_dir, directory=True)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def clean_leftovers(model_dir: Path) -> list[str]:
    """Remove staging and removal leftovers of interrupted runs; names removed."""
    removed: list[str] = []
    if not model_dir.is_dir():
        return removed
    for child in model_dir.iterdir():
        if child.name.startswith((STAGING_PREFIX, REMOVING_PREFIX)) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed


# --------------------------------------------------------------------------------------------
# Keras


def is_keras_file(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() in KERAS_SUFFIXES


def export_keras(source: Path, target: Path) -> None:
    """Export a Keras model file to a SavedModel with a ``serving_default`` signature."""
    argv = [
        sys.executable,
        "-m",
        "tfstack.rollout.staging",
        "export-keras",
        str(source),
        str(target),
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RolloutError(
            f"exporting {source} took longer than {EXPORT_TIMEOUT_S:.0f} s",
            model=target.parent.name,
            step="stage",
        ) from exc
    if result.returncode != 0:
        tail = [line for line in result.stderr.splitlines() if line.strip()][-8:]
        raise RolloutError(
            f"{source} could not be exported to a SavedModel",
            model=target.parent.name,
            step="stage",
            evidence=tail,
            hint="check that the file loads with keras.models.load_model",
        )


def _export_keras_main(source: str, target: str) -> None:
    import keras  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    model = keras.models.load_model(source, compile=False)
    # Keras 3: a tf.function endpoint `serve` that is also the `serving_default` signature.
    model.export(target, format="tf_saved_model", verbose=False)


# --------------------------------------------------------------------------------------------
# Staging


@dataclass(frozen=True)
class StageResult:
    version_dir: Path
    signatures: Mapping[str, Signature]
    warnings: tuple[str, ...] = ()
    copied: bool = True  # False when the version directory already existed (adopted)


def check_candidate(
    candidate: Path,
    current: Path | None,
    *,
    allow_signature_change: bool,
    model: str,
    version: int,
) -> tuple[dict[str, Signature], list[str]]:
    """Signatures of ``candidate`` and warnings; RolloutError when incompatible with ``current``."""
    signatures = read_signatures(candidate)
    problems = layout_problems(candidate)
    if problems:
        raise RolloutError(
            "the new version is not a complete SavedModel",
            model=model,
            version=version,
            step="stage",
            evidence=problems,
            hint="re-export it; nothing was renamed into place",
        )
    warnings: list[str] = []
    if current is not None:
        incompatible = signature_problems(read_signatures(current), signatures)
        if incompatible and not allow_signature_change:
            raise RolloutError(
                f"the new version's signatures are incompatible with version {current.name} "
                "(clients would break)",
                model=model,
                version=version,
                step="stage",
                evidence=incompatible,
                hint="fix the export, or pass --allow-signature-change if every client is ready",
            )
        warnings = [f"allowed signature change: {text}" for text in incompatible]
    return signatures, warnings


def stage_version(
    source: Path | None,
    model_dir: Path,
    version: int,
    *,
    current: int | None,
    allow_signature_change: bool,
    model: str,
    before_rename: Callable[[], None] = lambda: None,
    say: Say = lambda text: None,
) -> StageResult:
    """Copy/export ``source`` to a dot-name in ``model_dir``, check it, rename it to ``version``.

    ``source`` None adopts a version directory already in place (checks only). ``current`` is the
    version whose signatures clients use now. ``before_rename`` runs just before the rename (the
    journal records that the directory is about to exist). Nothing numbered is left behind when a
    check fails.
    """
    existing = existing_version_dir(model_dir, version, model=model)
    current_dir = None
    if current is not None:
        current_dir = existing_version_dir(model_dir, current, model=model)
        if current_dir is None:
            raise RolloutError(
                f"{model_dir} has no directory for version {current}, the one clients use now",
                model=model,
                version=version,
                step="stage",
                hint="restore that version's directory, or roll back to a version still on disk",
            )
    if source is None:
        if existing is None:
            raise RolloutError(
                f"{model_dir} has no directory for version {version} and no --source was given",
                model=model,
                version=version,
                step="stage",
                hint="pass --source DIR (a SavedModel) or --source FILE.keras",
            )
        signatures, warnings = check_candidate(
            existing,
            current_dir,
            allow_signature_change=allow_signature_change,
            model=model,
            version=version,
        )
        return StageResult(existing, signatures, tuple(warnings), copied=False)
    if existing is not None:
        raise RolloutError(
            f"{existing} already exists (version {version})",
            model=model,
            version=version,
            step="stage",
            hint="pick a new version number, or drop --source to roll out the directory in place",
        )
    if not source.exists():
        raise RolloutError(
            f"--source {source} does not exist", model=model, version=version, step="stage"
        )
    clean_leftovers(model_dir)
    # Named like the versions beside it (00000124 next to 00000123), renamed from a dot-name.
    final = model_dir / name_for_new_version(version_dirs(model_dir), version)
    staged = staging_dir(model_dir, version)
    try:
        if is_keras_file(source):
            say(f"exporting Keras model {source} to a SavedModel")
            export_keras(source, staged)
            copy_fix_modes(staged)
        elif source.is_dir():
            say(f"copying {source} to {staged.name}")
            copy_tree(source, staged)
        else:
            raise RolloutError(
                f"--source {source} is neither a SavedModel directory nor a Keras file "
                f"({', '.join(KERAS_SUFFIXES)})",
                model=model,
                version=version,
                step="stage",
            )
        fsync_tree(staged)
        signatures, warnings = check_candidate(
            staged,
            current_dir,
            allow_signature_change=allow_signature_change,
            model=model,
            version=version,
        )
        before_rename()
        os.rename(staged, final)
        fsync_path(model_dir, directory=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return StageResult(final, signatures, tuple(warnings))


def copy_fix_modes(target: Path) -> None:
    """Make an exported tree readable by the server's non-root user."""
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)
    os.chmod(target, 0o755)


if __name__ == "__main__":  # pragma: no cover - exercised through export_keras
    if len(sys.argv) == 4 and sys.argv[1] == "export-keras":
        _export_keras_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tfstack.rollout.staging export-keras SOURCE TARGET")
