"""Unit tests for version directories under a model base path (TF Serving's naming rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfstack.core.versions import (
    INT64_MAX,
    VersionDir,
    dirs_of_version,
    duplicate_versions,
    name_for_new_version,
    parse_version,
    version_dirs,
)


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("1", 1),
        ("123", 123),
        ("00000123", 123),
        ("0", 0),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MAX + 1), None),
        ("v2", None),
        ("1.5", None),
        ("-3", None),
        ("+3", None),
        (" 3", None),
        ("", None),
        ("\u0663", None),  # Arabic-Indic digit three: digits, but not ASCII
        (".tfstack-staging-4-1-abc", None),
    ],
)
def test_a_name_is_a_version_only_when_ascii_digits_within_int64(
    name: str, version: int | None
) -> None:
    """Only ASCII-digit names within int64 are versions; zero padding reads as the integer."""
    assert parse_version(name) == version


def test_version_dirs_keep_real_names_and_skip_files_and_other_names(tmp_path: Path) -> None:
    """Directories are listed by version with their real names; files and non-numeric dirs not."""
    for name in ("00000123", "7", "v8", ".staging-9"):
        (tmp_path / name).mkdir()
    (tmp_path / "10").write_text("a file, not a version")
    assert version_dirs(tmp_path) == (VersionDir(7, "7"), VersionDir(123, "00000123"))


def test_two_names_for_one_version_are_reported_with_both_names(tmp_path: Path) -> None:
    """`7` and `007` are both version 7: the duplicate names both folders."""
    for name in ("7", "007", "8"):
        (tmp_path / name).mkdir()
    dirs = version_dirs(tmp_path)
    assert duplicate_versions(dirs) == {7: ("007", "7")}
    assert dirs_of_version(dirs, 7) == ("007", "7")
    assert dirs_of_version(dirs, 8) == ("8",)
    assert dirs_of_version(dirs, 9) == ()


@pytest.mark.parametrize(
    ("existing", "new"),
    [
        ((), "1"),
        (("1", "2"), "3"),
        (("00000123",), "00000124"),
        (("0001", "2"), "0003"),
        (("0",), "5"),
        (("099",), "100"),
        (("09",), "123"),
    ],
)
def test_a_new_version_is_named_in_the_style_of_its_neighbours(
    existing: tuple[str, ...], new: str
) -> None:
    """Zero-padded when the model's versions are (at their width), plain digits otherwise."""
    dirs = [VersionDir(int(name), name) for name in existing]
    version = int(new)
    assert name_for_new_version(dirs, version) == new
    assert parse_version(new) == version


def test_an_unreadable_base_path_raises(tmp_path: Path) -> None:
    """A missing base path is an OSError for the caller to explain, not an empty listing."""
    with pytest.raises(FileNotFoundError):
        version_dirs(tmp_path / "missing")
