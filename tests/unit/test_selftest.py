"""`invoke test`: the pytest command line of each tier and what the task passes on (no Docker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

from tfstack import selftest
from tfstack.selftest import pytest_args


def test_fresh_tier_runs_tests_fresh_by_its_marker() -> None:
    """test --fresh runs tests/fresh selected by the fresh marker, with -k and -x passed on."""
    argv = pytest_args(unit_only=False, fresh=True, keyword="d-everything", exit_first=True)
    assert argv == [
        sys.executable,
        "-m",
        "pytest",
        "tests/fresh",
        "-m",
        "fresh",
        "-k",
        "d-everything",
        "-x",
    ]


def test_plain_tiers_do_not_select_the_fresh_marker() -> None:
    """A plain run and --unit never name the fresh marker (tests/fresh deselects itself then)."""
    assert pytest_args(unit_only=False)[3:] == ["tests"]
    assert pytest_args(unit_only=True)[3:] == ["tests/unit"]


class Recorded:
    """What run_tests did: engine set-ups and the argv it ran."""

    def __init__(self) -> None:
        self.engines = 0
        self.argv: list[str] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    seen = Recorded()

    def ensure_engine(**_: Any) -> None:
        seen.engines += 1

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.argv = argv
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(selftest, "ensure_engine", ensure_engine)
    monkeypatch.setattr(subprocess, "run", run)
    return seen


@pytest.mark.parametrize(
    ("unit_only", "fresh", "engines"), [(True, False, 0), (False, False, 1), (False, True, 1)]
)
def test_run_tests_sets_up_the_engine_for_docker_tiers(
    recorded: Recorded, unit_only: bool, fresh: bool, engines: int
) -> None:
    """Integration and fresh tiers get the host's engine first; the unit tier never needs it."""
    code = selftest.run_tests(
        root=Path.cwd(), unit_only=unit_only, fresh=fresh, junit_xml=None, say=lambda _: None
    )
    assert code == 0
    assert recorded.engines == engines
    assert ("tests/fresh" in recorded.argv) is fresh


def test_test_task_passes_fresh_and_junit_xml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`test --fresh --junit-xml PATH` reaches run_tests; a failing pytest exit code is kept."""
    calls: list[dict[str, Any]] = []

    def run_tests(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 3

    monkeypatch.setattr(tasks, "run_tests", run_tests)
    report = tmp_path / "fresh.xml"
    with pytest.raises(Exit) as stopped:
        tasks.test(MockContext(), fresh=True, junit_xml=str(report), k="a-no-docker")
    assert stopped.value.code == 3
    assert calls[0]["fresh"] is True
    assert calls[0]["junit_xml"] == report
    assert calls[0]["keyword"] == "a-no-docker"


def test_ci_runs_the_fresh_tier_only_after_the_main_suite_passes() -> None:
    """.ci/run runs `./tfstack test --fresh` only when `./tfstack test` exited 0, and exits with
    the first failure's status."""
    script = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text(encoding="utf-8")
    main, fresh = script.index("./tfstack test ||"), script.index("./tfstack test --fresh ||")
    assert main < script.index('if [ "$status" -eq 0 ]; then') < fresh
    assert script.rstrip().endswith('exit "$status"')
