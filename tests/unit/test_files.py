"""Atomic multi-file writes and plans (tfstack.core.files); injected failures, no Docker needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tfstack.core import files as files_module
from tfstack.core.files import format_plan, plan_files, write_files_atomically
from tfstack.errors import WriteError


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(root: Path) -> list[str]:
    return [
        p.name
        for p in root.rglob("*")
        if p.name.endswith((files_module.TEMP_SUFFIX, files_module.BACKUP_SUFFIX))
    ]


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "compose").mkdir()
    (tmp_path / "config" / "a.config").write_text("old a\n")
    (tmp_path / "config" / "b.config").write_text("old b\n")
    (tmp_path / "compose" / "c.yml").write_text("old c\n")
    return tmp_path


NEW = {"config/a.config": "new a\n", "config/b.config": "new b\n", "compose/c.yml": "new c\n"}


def test_writes_new_files_creating_directories(tmp_path: Path) -> None:
    """Files and missing parent directories are created; every written path is reported."""
    changed = write_files_atomically(tmp_path, {"x/y/z.txt": "hello\n", "top.txt": "t"})
    assert changed == ["x/y/z.txt", "top.txt"]
    assert (tmp_path / "x/y/z.txt").read_text() == "hello\n"
    assert (tmp_path / "top.txt").read_text() == "t"
    assert stat.S_IMODE((tmp_path / "top.txt").stat().st_mode) == 0o644
    assert _leftovers(tmp_path) == []


def test_identical_files_are_not_rewritten(populated: Path) -> None:
    """Same bytes => the file is untouched (same inode and mtime), and not reported as changed."""
    target = populated / "config" / "a.config"
    before = target.stat()
    changed = write_files_atomically(
        populated, {"config/a.config": "old a\n", "compose/c.yml": "x"}
    )
    after = target.stat()
    assert changed == ["compose/c.yml"]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_existing_file_mode_is_kept(populated: Path) -> None:
    """A rewritten file keeps its permission bits instead of the temp file's 0600."""
    target = populated / "config" / "a.config"
    target.chmod(0o640)
    write_files_atomically(populated, {"config/a.config": "changed\n"})
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_rename_failure_midway_restores_every_file(
    populated: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    """os.replace failing at any rename leaves all previous files byte-identical and no temps."""
    before = _snapshot(populated)
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(WriteError) as caught:
        write_files_atomically(populated, NEW)
    assert "no file was changed" in str(caught.value)
    assert _snapshot(populated) == before
    assert _leftovers(populated) == []


def test_rename_failure_removes_files_that_did_not_exist(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file already renamed into place is removed again when a later rename fails."""
    before = _snapshot(populated)
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(WriteError):
        write_files_atomically(populated, {"config/new.config": "n\n", "config/a.config": "x\n"})
    assert _snapshot(populated) == before
    assert not (populated / "config" / "new.config").exists()
    assert _leftovers(populated) == []


def test_write_failure_midway_changes_nothing(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write failing while staging the second file leaves the disk as it was, no temp files,
    and no directory created for the failed batch."""
    before = _snapshot(populated)
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    with pytest.raises(WriteError) as caught:
        write_files_atomically(populated, {**NEW, "fresh/dir/d.txt": "d"})
    assert caught.value.path == "config/b.config"
    assert "No space left" in str(caught.value)
    assert _snapshot(populated) == before
    assert _leftovers(populated) == []
    assert not (populated / "fresh").exists()


def test_interrupt_while_staging_cleans_up(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) during a write propagates, leaving files and no temps behind."""
    before = _snapshot(populated)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_files_atomically(populated, NEW)
    assert _snapshot(populated) == before
    assert _leftovers(populated) == []


def test_successful_write_replaces_all_and_leaves_no_temps(populated: Path) -> None:
    """The happy path: every file has its new content and no temp or backup file remains."""
    changed = write_files_atomically(populated, NEW)
    assert changed == list(NEW)
    assert _snapshot(populated) == {k: v.encode() for k, v in NEW.items()}
    assert _leftovers(populated) == []


def test_remove_deletes_only_after_writes(populated: Path) -> None:
    """Paths in `remove` are deleted (missing ones ignored) and reported after the writes."""
    changed = write_files_atomically(
        populated, {"config/a.config": "new a\n"}, remove=["config/b.config", "config/gone"]
    )
    assert changed == ["config/a.config", "config/b.config"]
    assert not (populated / "config" / "b.config").exists()


def test_remove_is_skipped_when_a_write_fails(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write deletes nothing: files meant for removal survive too."""
    before = _snapshot(populated)

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError):
        write_files_atomically(populated, {"config/a.config": "x"}, remove=["config/b.config"])
    assert _snapshot(populated) == before


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../b", "./a", "a//b", ""])
def test_paths_must_stay_inside_root(tmp_path: Path, bad: str) -> None:
    """Absolute, escaping or non-normalised paths are refused before anything is written."""
    with pytest.raises(WriteError) as caught:
        write_files_atomically(tmp_path, {"ok.txt": "x", bad: "y"})
    assert "not a normalised path" in str(caught.value)
    assert not (tmp_path / "ok.txt").exists()


def test_directory_in_the_way_is_reported(tmp_path: Path) -> None:
    """A directory where a file should go gives a WriteError naming it, and nothing is written."""
    (tmp_path / "config" / "models.config").mkdir(parents=True)
    with pytest.raises(WriteError) as caught:
        write_files_atomically(tmp_path, {"a.txt": "a", "config/models.config": "x"})
    assert "is a directory" in str(caught.value)
    assert not (tmp_path / "a.txt").exists()


def test_plan_reports_create_update_unchanged_delete(populated: Path) -> None:
    """plan_files classifies each file and gives unified diffs against the disk, writing nothing."""
    before = _snapshot(populated)
    changes = plan_files(
        populated,
        {"config/a.config": "old a\n", "config/b.config": "new b\n", "config/n.config": "n\n"},
        remove=["compose/c.yml", "compose/missing.yml"],
    )
    assert [(c.path, c.action) for c in changes] == [
        ("config/a.config", "unchanged"),
        ("config/b.config", "update"),
        ("config/n.config", "create"),
        ("compose/c.yml", "delete"),
    ]
    by_path = {c.path: c for c in changes}
    assert by_path["config/a.config"].diff == ""
    assert "--- a/config/b.config\n+++ b/config/b.config\n" in by_path["config/b.config"].diff
    assert "-old b\n+new b\n" in by_path["config/b.config"].diff
    assert by_path["config/n.config"].diff.startswith("--- /dev/null\n+++ b/config/n.config\n")
    assert "+++ /dev/null" in by_path["compose/c.yml"].diff
    assert _snapshot(populated) == before


def test_plan_marks_missing_final_newline(tmp_path: Path) -> None:
    """A diff line without a trailing newline gets the standard marker instead of merging lines."""
    (tmp_path / "f").write_text("a")
    (change,) = plan_files(tmp_path, {"f": "b\n"})
    assert "-a\n\\ No newline at end of file\n+b\n" in change.diff


def test_format_plan_says_no_changes(populated: Path) -> None:
    """A plan without differences says so explicitly."""
    text = format_plan(plan_files(populated, {"config/a.config": "old a\n"}))
    assert "unchanged  config/a.config" in text
    assert text.endswith("no changes\n")
