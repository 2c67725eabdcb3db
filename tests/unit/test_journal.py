"""Unit tests for the rollout journal: round trips, atomic files, interrupted detection, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tfstack.errors import RolloutError
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
    StepRecord,
    journal_path,
    read_journal,
    status_summary,
    unfinished,
    write_journal,
)
from tfstack.stack.status import observe, render_table


def make(status: str = "running", pid: int | None = None) -> Journal:
    step = Step(
        "load",
        "transition",
        "serve [1, 2]",
        target=ModelState({"specific": [1, 2]}, {"stable": 1}),
        wait_available=(2,),
    )
    journal = Journal(
        project="p",
        model="m",
        action="rollout",
        version=2,
        original=ModelState({"latest": 1}, {"stable": 1}),
        original_spec_text="# comment\nformat: 1\n",
        original_served=(1,),
        previous_stable=1,
        steps=[StepRecord(step, "running")],
        status=status,  # type: ignore[arg-type]
    )
    if pid is not None:
        journal.pid = pid
    return journal


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_journal_round_trips_through_json(tmp_path: Path) -> None:
    """Everything written is read back equal: steps, targets, spec text, flags."""
    journal = make()
    journal.created_version_dir = True
    write_journal(tmp_path, journal)
    back = read_journal(tmp_path, "p", "m")
    assert back is not None
    assert back.steps[0].step == journal.steps[0].step
    assert back.original == journal.original
    assert back.original_spec_text == journal.original_spec_text
    assert back.created_version_dir is True
    assert journal_path(tmp_path, "p", "m").name == "m.json"


def test_writing_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Atomic writes: only the journal itself remains in its directory."""
    write_journal(tmp_path, make())
    write_journal(tmp_path, make(status="done"))
    files = sorted(p.name for p in journal_path(tmp_path, "p", "m").parent.iterdir())
    assert files == ["m.json"]


def test_a_damaged_journal_is_reported_with_its_path(tmp_path: Path) -> None:
    """A journal that is not valid JSON is an error naming the file, not a crash."""
    path = journal_path(tmp_path, "p", "m")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(RolloutError, match=str(path)):
        read_journal(tmp_path, "p", "m")


def test_a_running_journal_of_a_dead_process_is_interrupted() -> None:
    """status running + a pid that no longer runs = interrupted, with the resume hint."""
    journal = make(pid=dead_pid())
    assert journal.interrupted
    summary = journal.summary()
    assert summary["state"] == "interrupted"
    assert "--resume" in summary["next"]
    assert summary["step"] == "load"


def test_a_running_journal_of_this_process_is_not_interrupted() -> None:
    """A live rollout (our own pid) is running, not interrupted."""
    assert not make().interrupted


def test_status_lists_only_unfinished_rollouts(tmp_path: Path) -> None:
    """invoke status shows running/canary/restore_failed journals, not done or aborted ones."""
    write_journal(tmp_path, make(status="done"))
    assert status_summary(tmp_path, "p") is None
    canary = make(status="canary")
    canary.model = "c"
    write_journal(tmp_path, canary)
    running = make(pid=dead_pid())
    running.model = "r"
    write_journal(tmp_path, running)
    summary = status_summary(tmp_path, "p")
    assert summary is not None
    assert set(summary) == {"c", "r"}
    assert summary["r"]["state"] == "interrupted"
    assert "--promote" in summary["c"]["next"]
    assert [j.model for j in unfinished(tmp_path, "p")] == ["c", "r"]


def test_unknown_journal_format_is_rejected(tmp_path: Path) -> None:
    """A journal from a future format is not guessed at."""
    path = journal_path(tmp_path, "p", "m")
    path.parent.mkdir(parents=True)
    data = make().to_json()
    data["format"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(RolloutError, match="format"):
        read_journal(tmp_path, "p", "m")


def test_model_state_describes_policies() -> None:
    """Descriptions used in plans and messages."""
    assert ModelState({"latest": 2}, {}).describe() == "latest 2; labels none"
    assert ModelState({"all": True}, {"b": 2, "a": 1}).describe() == "all; labels a=1, b=2"
    assert ModelState.pinned([3, 1, 3], {"stable": 3}).specific == (1, 3)


def test_status_table_shows_an_unfinished_rollout_with_the_next_command(tmp_path: Path) -> None:
    """invoke status finds the journal next to the spec and prints one line per rollout."""

    interrupted = make(pid=dead_pid())
    write_journal(tmp_path, interrupted)
    (tmp_path / "config").mkdir()

    class NoRest:
        base_url = "http://127.0.0.1:1"

    status = observe(
        project="p",
        spec_path=str(tmp_path / "config" / "stack.yaml"),
        rest=NoRest(),  # type: ignore[arg-type]
        expectations=[],
        containers=[],
        host="127.0.0.1",
        rest_port=1,
        grpc_port=2,
    )
    assert status.rollout is not None and status.rollout["m"]["state"] == "interrupted"
    assert status.to_json()["rollout"]["m"]["step"] == "load"

    console = Console(width=200, record=True)
    console.print(render_table(status))
    text = console.export_text()
    assert "rollout of m to version 2: interrupted at step load" in text
    assert "invoke rollout --model m --resume" in text
