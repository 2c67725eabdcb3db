"""Atomic multi-file writes and plans (unified diffs) for generated files.

Plan, then apply: :func:`plan_files` compares wanted contents with the disk and returns data;
:func:`write_files_atomically` carries a set of writes out so that either every changed file gets
its new bytes or every file keeps its old ones:

1. each changed file is written to a temporary file in its own directory and fsynced;
2. every existing target gets a hard link (or copy) as a backup;
3. temporaries are renamed over their targets; if one rename fails, the targets already replaced
   are restored from their backups (new files are removed);
4. directories are fsynced, backups removed, then files no longer wanted are deleted.

Files whose bytes already match are not touched (their mtime and inode stay), so a re-render that
changes nothing writes nothing and a server polling the files sees nothing happen.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from tfstack.errors import WriteError

TEMP_SUFFIX = ".tfstack-tmp"
BACKUP_SUFFIX = ".tfstack-bak"
NEW_FILE_MODE = 0o644  # the server runs as a non-root uid and must read the rendered files

Action = Literal["create", "update", "delete", "unchanged"]


@dataclass(frozen=True)
class FileChange:
    """What a write would do to one file; ``diff`` is a unified diff ("" when unchanged)."""

    path: str
    action: Action
    diff: str = ""


def _check_relative(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or ".." in pure.parts or path != pure.as_posix():
        raise WriteError(
            "not a normalised path inside the project",
            path=path,
            hint="generated files are named by relative paths such as config/models.config",
        )
    return pure


def _target(root: Path, path: str) -> Path:
    return root.joinpath(*_check_relative(path).parts)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError as exc:
        raise WriteError("is a directory, expected a file", path=str(path)) from exc
    except OSError as exc:
        raise WriteError(f"cannot read: {exc.strerror}", path=str(path)) from exc


def _diff(path: str, old: bytes | None, new: bytes | None) -> str:
    def lines(data: bytes | None) -> list[str]:
        return [] if data is None else data.decode("utf-8", errors="replace").splitlines(True)

    before = lines(old)
    after = lines(new)
    diff = difflib.unified_diff(
        before,
        after,
        fromfile=f"a/{path}" if old is not None else "/dev/null",
        tofile=f"b/{path}" if new is not None else "/dev/null",
    )
    text = ""
    for line in diff:
        text += line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
    return text


def plan_files(
    root: Path, files: Mapping[str, str], remove: Iterable[str] = ()
) -> list[FileChange]:
    """What writing ``files`` (relative path -> text) and deleting ``remove`` would change."""
    changes: list[FileChange] = []
    for path, text in files.items():
        old = _read(_target(root, path))
        new = text.encode("utf-8")
        if old == new:
            changes.append(FileChange(path, "unchanged"))
        else:
            action: Action = "create" if old is None else "update"
            changes.append(FileChange(path, action, _diff(path, old, new)))
    for path in remove:
        if path in files:
            continue
        old = _read(_target(root, path))
        if old is not None:
            changes.append(FileChange(path, "delete", _diff(path, old, None)))
    return changes


def format_plan(changes: Sequence[FileChange]) -> str:
    """The plan as text: one summary line per file, then the diffs."""
    lines = [f"{change.action:>9}  {change.path}" for change in changes]
    diffs = [change.diff for change in changes if change.diff]
    if not diffs:
        return "\n".join([*lines, "no changes"]) + "\n"
    return "\n".join(lines) + "\n\n" + "".join(diffs)


PLAN_SCHEMA = "tfstack.plan/v1"
"""``invoke plan --json``: the document's ``schema`` (docs/json-output.md)."""


def plan_to_json(changes: Sequence[FileChange]) -> dict[str, object]:
    """The plan as a JSON-able document (``invoke plan --json``, schema ``tfstack.plan/v1``)."""
    return {
        "schema": PLAN_SCHEMA,
        "changed": any(change.action != "unchanged" for change in changes),
        "changes": [
            {"path": change.path, "action": change.action, "diff": change.diff}
            for change in changes
        ],
    }


@dataclass
class _Staged:
    path: str
    target: Path
    temp: Path
    backup: Path | None = None
    replaced: bool = False


def _unique_sibling(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")


def _write_temp(target: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary sibling of ``target``, fsynced, with the right mode."""
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    temp = _unique_sibling(target, TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    return temp


def _backup(target: Path) -> Path | None:
    if not target.exists():
        return None
    backup = _unique_sibling(target, BACKUP_SUFFIX)
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def fsync_path(path: Path, *, directory: bool) -> None:
    """fsync a file or directory; best effort (some filesystems refuse fsync on directories)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # the renames are done either way; durability is what is lost
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (deepest first), so a crash keeps whole files."""
    directories = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name, directory=False)
        directories += [Path(dirpath) / name for name in dirnames]
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        fsync_path(directory, directory=True)


def _make_parents(root: Path, target: Path, created: list[Path]) -> None:
    missing: list[Path] = []
    parent = target.parent
    while not parent.exists() and parent != root and root in parent.parents:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir()
        created.append(directory)


def _discard(staged: Sequence[_Staged], created_dirs: Sequence[Path]) -> None:
    for item in staged:
        for leftover in (None if item.replaced else item.temp, item.backup):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
    for directory in reversed(created_dirs):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _roll_back(staged: Sequence[_Staged]) -> list[str]:
    """Put back every target already replaced; returns the paths that could not be restored."""
    failed: list[str] = []
    for item in reversed(staged):
        if not item.replaced:
            continue
        try:
            if item.backup is not None:
                os.replace(item.backup, item.target)
                item.backup = None
            else:
                os.unlink(item.target)
        except OSError:
            failed.append(item.path)
    return failed


def write_files_atomically(
    root: Path, files: Mapping[str, str], remove: Iterable[str] = ()
) -> list[str]:
    """Write ``files`` (relative path -> text) under ``root``: all changed files or none.

    Files with identical bytes are left alone; ``remove`` names files to delete once every write
    succeeded (missing ones are ignored). Returns the relative paths changed or deleted, in order.
    Raises :class:`WriteError` (previous contents intact) when anything fails.
    """
    root = root.resolve()
    staged: list[_Staged] = []
    created_dirs: list[Path] = []
    current = ""
    try:
        for path, text in files.items():
            current = path
            target = _target(root, path)
            data = text.encode("utf-8")
            if _read(target) == data:
                continue
            _make_parents(root, target, created_dirs)
            staged.append(_Staged(path, target, _write_temp(target, data)))
        for item in staged:
            current = item.path
            item.backup = _backup(item.target)
        for item in staged:
            current = item.path
            os.replace(item.temp, item.target)
            item.replaced = True
    except BaseException as exc:
        unrestored = _roll_back(staged)
        _discard(staged, created_dirs)
        if unrestored:
            raise WriteError(
                f"writing failed ({exc}) and {', '.join(unrestored)} could not be restored",
                path=current,
                hint="check the disk and permissions, then render again",
            ) from exc
        if isinstance(exc, WriteError):
            raise
        if isinstance(exc, OSError):
            raise WriteError(
                f"cannot write: {exc.strerror or exc}; no file was changed",
                path=current,
                hint="check free space and permissions of the directory",
            ) from exc
        raise
    for directory in sorted({item.target.parent for item in staged}):
        fsync_path(directory, directory=True)
    _discard(staged, ())
    changed = [item.path for item in staged]
    for path in remove:
        if path in files:
            continue
        target = _target(root, path)
        try:
            target.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise WriteError(
                f"every other file was written, but deleting this one failed: {exc.strerror}",
                path=path,
                hint="delete it by hand; nothing reads it any more",
            ) from exc
        fsync_path(target.parent, directory=True)
        changed.append(path)
    return changed
