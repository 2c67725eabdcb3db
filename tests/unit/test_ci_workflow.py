"""The project's own .github/workflows/ci.yml: it runs .ci/run and passes actionlint."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .test_ci_pipeline import actionlint

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def test_project_workflow_passes_actionlint() -> None:
    """actionlint (and shellcheck on its run: lines) accepts the project's workflow."""
    result = actionlint(WORKFLOW, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_project_workflow_mirrors_ci_run() -> None:
    """One job on ubuntu with a timeout runs `bash .ci/run`, the README's test command."""
    document = yaml.safe_load(WORKFLOW.read_text())
    assert document["concurrency"]["cancel-in-progress"] is True
    assert document["permissions"] == {"contents": "read"}
    (job,) = document["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert 0 < job["timeout-minutes"] <= 90
    assert [step["run"] for step in job["steps"] if "run" in step] == ["bash .ci/run"]
    assert "./tfstack test" in (ROOT / ".ci" / "run").read_text()
    assert "./tfstack test" in (ROOT / "README.md").read_text()


def test_project_workflow_pins_checkout_by_commit() -> None:
    """actions/checkout is pinned by a full commit SHA with its tag in a comment."""
    uses = re.findall(r"uses: (\S+)( # \S+)?", WORKFLOW.read_text())
    assert uses
    for action, tag in uses:
        assert re.fullmatch(r"actions/checkout@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", tag), tag
