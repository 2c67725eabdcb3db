"""A local rehearsal of the generated GitHub workflow: its lint job's `run:` steps, with bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tfstack.ci import GITHUB_WORKFLOW, write_pipeline

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def demo_copy(target: Path) -> Path:
    """The repository's tracked files in a fresh git repository, with ./tfstack as a shim.

    The shim runs this venv's invoke (the real ./tfstack would bootstrap a second venv); `.venv`
    links to this venv, where the workflow finds hadolint and actionlint.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shim = target / "tfstack"
    shim.write_text(f'#!/bin/sh\nexec "{BIN / "invoke"}" "$@"\n')
    shim.chmod(0o755)
    (target / ".venv").symlink_to(BIN.parent)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    write_pipeline("github", target / "config" / "stack.yaml", target, target)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    return target


def test_lint_job_run_steps_pass_in_a_copy_of_the_demo(tmp_path: Path) -> None:
    """Runs every `run:` step of the lint job (validate --json, hadolint, actionlint) with bash.

    Skipped, because they need a hosted runner or take far longer than a unit test: build
    (`./tfstack images` builds the runtime image), unit and integration (the test suite itself),
    rehearsal (a running stack and `bench rollout`) and deploy (a self-hosted runner behind an
    approval). Their commands are checked for shape in test_ci_pipeline.py.
    """
    repo = demo_copy(tmp_path / "demo")
    document = yaml.safe_load((repo / GITHUB_WORKFLOW).read_text())
    steps = [step for step in document["jobs"]["lint"]["steps"] if "run" in step]
    assert [step["name"] for step in steps] == [
        "Validate the stack spec",
        "hadolint on every committed Dockerfile",
        "actionlint on this workflow",
    ]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update({str(k): str(v) for k, v in document["env"].items()})
    for step in steps:
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{step['name']}:\n{result.stdout}{result.stderr}"
    report = yaml.safe_load((repo / "reports" / "validate.json").read_text())
    assert report["schema"] == "tfstack.validate/v1" and report["ok"] is True


def test_rehearsal_fails_when_a_dockerfile_has_findings(tmp_path: Path) -> None:
    """The hadolint step is real: a Dockerfile with `FROM x:latest` fails the step."""
    repo = demo_copy(tmp_path / "demo")
    bad = repo / "dockerfiles" / "bad" / "Dockerfile"
    bad.parent.mkdir(parents=True)
    bad.write_text("FROM debian:latest\nRUN cd /tmp && echo hi\n")
    subprocess.run(["git", "add", str(bad)], cwd=repo, check=True)
    document = yaml.safe_load((repo / GITHUB_WORKFLOW).read_text())
    (step,) = [
        s for s in document["jobs"]["lint"]["steps"] if s.get("name", "").startswith("hadolint")
    ]
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", step["run"]],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout
