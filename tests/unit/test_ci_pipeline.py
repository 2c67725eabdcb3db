"""`invoke ci init`: generated GitHub and GitLab pipelines, their linters, and the write rules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tfstack.ci import (
    ACTIONS,
    GITHUB_WORKFLOW,
    GITLAB_JOBS,
    GITLAB_PIPELINE,
    GITLAB_STAGES,
    plan_pipeline,
    write_pipeline,
)
from tfstack.errors import SpecError, UsageError

ROOT = Path(__file__).resolve().parents[2]
DEMO_SPEC = ROOT / "config" / "stack.yaml"
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40}) # (?P<tag>v\d+\.\d+\.\d+)$")


def actionlint(workflow: Path, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """actionlint from the venv (the dev dependency), with the venv's shellcheck for `run:`."""
    binary = BIN / "actionlint"
    assert binary.is_file(), f"{binary} missing: ./tfstack installs the dev dependencies"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(binary), "-no-color", str(workflow)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def github_files(tmp_path: Path) -> Path:
    """The demo's GitHub pipeline written into a fresh git repository; returns its root."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write_pipeline("github", DEMO_SPEC, ROOT, tmp_path)
    return tmp_path


def workflow_text() -> str:
    return plan_pipeline("github", DEMO_SPEC, ROOT, ROOT)[GITHUB_WORKFLOW]


def workflow() -> dict[Any, Any]:
    document = yaml.safe_load(workflow_text())
    assert isinstance(document, dict)
    return document


def gitlab() -> dict[str, Any]:
    document = yaml.safe_load(plan_pipeline("gitlab", DEMO_SPEC, ROOT, ROOT)[GITLAB_PIPELINE])
    assert isinstance(document, dict)
    return document


def test_generated_github_workflow_passes_actionlint(tmp_path: Path) -> None:
    """actionlint (with shellcheck on `run:` scripts) finds nothing in the demo's workflow."""
    root = github_files(tmp_path)
    result = actionlint(root / GITHUB_WORKFLOW, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The actionlint check is real: an unknown job key and a bad expression are reported."""
    root = github_files(tmp_path)
    path = root / GITHUB_WORKFLOW
    path.write_text(workflow_text().replace("timeout-minutes: 20", "timeout-minute: 20"))
    result = actionlint(path, cwd=root)
    assert result.returncode == 1
    assert "timeout-minute" in result.stdout


def test_github_jobs_run_in_order_with_timeouts() -> None:
    """lint -> build, unit -> integration -> rehearsal -> deploy; every job has a timeout."""
    jobs = workflow()["jobs"]
    assert list(jobs) == ["lint", "build", "unit", "integration", "rehearsal", "deploy"]
    needs = {name: job.get("needs") for name, job in jobs.items()}
    assert needs == {
        "lint": None,
        "build": "lint",
        "unit": "lint",
        "integration": ["build", "unit"],
        "rehearsal": "integration",
        "deploy": "rehearsal",
    }
    for name, job in jobs.items():
        assert 0 < job["timeout-minutes"] <= 60, name


def test_github_workflow_guards_concurrency_permissions_and_deploy() -> None:
    """Cancel-in-progress concurrency, read-only token, deploy only on the default branch."""
    document = workflow()
    assert document["concurrency"]["cancel-in-progress"] is True
    assert document["permissions"] == {"contents": "read"}
    deploy = document["jobs"]["deploy"]
    assert deploy["environment"] == "production"
    assert "github.event.repository.default_branch" in deploy["if"]
    assert deploy["concurrency"]["cancel-in-progress"] is False


def test_every_action_is_pinned_by_commit_with_its_tag() -> None:
    """Each `uses:` is owner/repo@<40-hex sha> # vX.Y.Z, one of the known pins."""
    lines = [
        line.split("uses:", 1)[1].strip()
        for line in workflow_text().splitlines()
        if "uses:" in line
    ]
    assert lines
    known = {action.uses for action in ACTIONS.values()}
    for line in lines:
        assert PINNED.match(line), line
        assert line in known


def test_images_are_built_once_and_loaded_by_later_jobs() -> None:
    """Only the build job runs `./tfstack images`; integration and rehearsal `docker load`."""
    jobs = workflow()["jobs"]

    def runs(job: str) -> str:
        return "\n".join(step.get("run", "") for step in jobs[job]["steps"])

    assert "./tfstack images" in runs("build") and "docker save" in runs("build")
    for job in ("lint", "unit", "integration", "rehearsal"):
        assert "./tfstack images" not in runs(job), job
    for job in ("integration", "rehearsal"):
        assert "docker load" in runs(job), job


def test_diagnostics_are_uploaded_always() -> None:
    """The rehearsal collects status --json and compose logs and uploads them with if: always()."""
    steps = workflow()["jobs"]["rehearsal"]["steps"]
    diagnostics = next(step for step in steps if step.get("name") == "Diagnostics")
    assert diagnostics["if"] == "always()"
    assert "status --spec" in diagnostics["run"] and "--json" in diagnostics["run"]
    assert "docker compose -p tfstack-demo logs" in diagnostics["run"]
    uploads = [step for step in steps if "upload-artifact" in step.get("uses", "")]
    assert uploads and all(step["if"] == "always()" for step in uploads)
    assert steps[-1]["if"] == "always()" and "./tfstack down" in steps[-1]["run"]


def test_gitlab_pipeline_has_exactly_the_stages_and_jobs() -> None:
    """Stages lint..deploy in order; each job names an existing stage; deploy is manual."""
    document = gitlab()
    assert document["stages"] == list(GITLAB_STAGES)
    jobs = {name: job for name, job in document.items() if isinstance(job, dict) and "stage" in job}
    assert {name: job["stage"] for name, job in jobs.items()} == GITLAB_JOBS
    for name, job in jobs.items():
        assert job["stage"] in document["stages"], name
        assert isinstance(job["script"], list) and job["script"], name
    assert document["default"]["interruptible"] is True
    assert document["default"]["timeout"]
    assert jobs["deploy"]["when"] == "manual" and jobs["deploy"]["interruptible"] is False
    for name in ("lint", "unit", "integration", "rehearsal"):
        assert jobs[name]["artifacts"]["when"] == "always", name


def flattened(lines: list[Any]) -> list[str]:
    """A GitLab script with its YAML-anchor sublists flattened, as GitLab runs it."""
    return [str(x) for line in lines for x in (line if isinstance(line, list) else [line])]


def test_gitlab_rehearsal_tears_down_and_keeps_diagnostics() -> None:
    """The rehearsal gates on bench rollout; after_script writes status/logs and stops the stack."""
    job = gitlab()["rehearsal"]
    script = flattened(job["script"])
    assert any("docker load" in line for line in script)
    assert any("bench rollout" in line for line in script)
    after = flattened(job["after_script"])
    assert any("--json > reports/status.json" in line for line in after)
    assert any("./tfstack down" in line for line in after)


def test_unknown_provider_is_a_usage_error(tmp_path: Path) -> None:
    """--provider circle names the providers and exits 2."""
    with pytest.raises(UsageError) as caught:
        write_pipeline("circle", DEMO_SPEC, ROOT, tmp_path)
    assert caught.value.exit_code == 2
    assert "unknown CI provider 'circle'" in str(caught.value)
    assert "github or gitlab" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_invalid_spec_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    """A spec with problems is a SpecError; no pipeline file appears."""
    spec = tmp_path / "config" / "stack.yaml"
    spec.parent.mkdir()
    spec.write_text("format: 1\nproject: Bad Name\nmodels: []\n")
    with pytest.raises(SpecError):
        write_pipeline("github", spec, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_different_workflow_is_not_overwritten_without_force(tmp_path: Path) -> None:
    """An existing, different file is refused (exit 2, untouched); --force replaces it."""
    target = tmp_path / GITHUB_WORKFLOW
    target.parent.mkdir(parents=True)
    target.write_text("name: mine\n")
    with pytest.raises(UsageError) as caught:
        write_pipeline("github", DEMO_SPEC, ROOT, tmp_path)
    assert "already there with different content" in str(caught.value)
    assert "--force" in str(caught.value)
    assert target.read_text() == "name: mine\n"
    assert not (tmp_path / ".github" / "actionlint.yaml").exists()
    changes = write_pipeline("github", DEMO_SPEC, ROOT, tmp_path, force=True)
    assert {c.path: c.action for c in changes}[GITHUB_WORKFLOW] == "update"
    assert target.read_text() == workflow_text()


def test_identical_content_is_a_no_op_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    """A second init changes nothing (same inode and mtime); --dry-run leaves the disk alone."""
    planned = write_pipeline("gitlab", DEMO_SPEC, ROOT, tmp_path / "repo", dry_run=True)
    assert [c.action for c in planned] == ["create"]
    assert not (tmp_path / "repo").exists()
    write_pipeline("gitlab", DEMO_SPEC, ROOT, tmp_path / "repo")
    before = (tmp_path / "repo" / GITLAB_PIPELINE).stat()
    again = write_pipeline("gitlab", DEMO_SPEC, ROOT, tmp_path / "repo")
    after = (tmp_path / "repo" / GITLAB_PIPELINE).stat()
    assert [c.action for c in again] == ["unchanged"]
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
