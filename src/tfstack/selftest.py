"""`invoke test`: the test tiers, with the Docker engine set up first when integration tests run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tfstack.core.progress import Say
from tfstack.docker.engine import ensure_engine


def pytest_args(
    *,
    unit_only: bool,
    keyword: str = "",
    exit_first: bool = False,
    junit_xml: Path | None = None,
    fresh: bool = False,
) -> list[str]:
    """The pytest command line for a tier (pure: unit-tested).

    ``junit_xml``: write a JUnit XML report there (``invoke test --junit-xml``) for CI systems.
    ``fresh``: the fresh-machine tier instead (``invoke test --fresh``): tests/fresh, selected by
    its marker, which plain runs deselect (tests/fresh/conftest.py).
    """
    args = [sys.executable, "-m", "pytest"]
    if fresh:
        args += ["tests/fresh", "-m", "fresh"]
    else:
        args += ["tests/unit"] if unit_only else ["tests"]
    if keyword:
        args += ["-k", keyword]
    if exit_first:
        args.append("-x")
    if junit_xml is not None:
        args.append(f"--junitxml={junit_xml}")
    return args


def test_environment(base: dict[str, str]) -> dict[str, str]:
    """Ryuk needs an image from a registry; tests clean up through labels instead."""
    env = dict(base)
    env["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    return env


def run_tests(
    *,
    root: Path,
    unit_only: bool,
    keyword: str = "",
    exit_first: bool = False,
    junit_xml: Path | None = None,
    fresh: bool = False,
    say: Say,
) -> int:
    """Run a tier; integration tests and the fresh-machine tier get the host's engine first."""
    if fresh or not unit_only:
        ensure_engine(say=say)
    argv = pytest_args(
        unit_only=unit_only,
        keyword=keyword,
        exit_first=exit_first,
        junit_xml=junit_xml,
        fresh=fresh,
    )
    say("running " + " ".join(argv[1:]))
    return subprocess.run(
        argv, cwd=root, env=test_environment(dict(os.environ)), check=False
    ).returncode
