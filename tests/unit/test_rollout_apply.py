"""Unit tests for applying rollout plans: journal bookkeeping, failure restore, resume, abort."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tfstack.errors import RolloutError, StackError
from tfstack.rollout.apply import apply, run_abort
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
    StepRecord,
    read_journal,
    write_journal,
)
from tfstack.rollout.plan import Observed, RolloutRequest, plan

LATEST = ModelState({"latest": 1}, {"stable": 1})


class FakeRunner:
    """Records every effect; can fail or be interrupted at a named step."""

    def __init__(self, *, fail_at: str | None = None, interrupt_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.interrupt_at = interrupt_at
        self.slept: list[float] = []

    def _act(self, step: Step) -> str:
        self.calls.append(step.name)
        if step.name == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        if step.name == self.fail_at:
            raise RolloutError(
                "candidate answered wrongly", model="m", step=step.name, evidence=["got 3.5"]
            )
        return f"{step.name} ok"

    def transition(self, step: Step, journal: Journal) -> str:
        return self._act(step)

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str:
        mark_created()
        return self._act(step)

    def verify(self, step: Step, journal: Journal) -> str:
        return self._act(step)

    def remove_version(self, step: Step, journal: Journal) -> str:
        return self._act(step)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def new_journal(request: RolloutRequest | None = None) -> Journal:
    request = request or RolloutRequest("m", version=2, source="/s")
    steps = plan(request, Observed("m", LATEST, (1,), (1,)))
    return Journal(
        project="p",
        model="m",
        action="rollout",
        version=2,
        original=LATEST,
        original_spec_text="spec",
        original_served=(1,),
        previous_stable=1,
        steps=[StepRecord(s) for s in steps],
    )


def saver(root: Path) -> Callable[[Journal], None]:
    return lambda journal: write_journal(root, journal)


def test_a_good_rollout_runs_every_step_in_order_and_records_history(tmp_path: Path) -> None:
    """Every step runs once, in order; the journal ends done with a history entry for rollback."""
    runner = FakeRunner()
    journal = new_journal()
    events: list[tuple[str, str]] = []
    apply(journal, runner, save=saver(tmp_path), on_step=lambda n, e, t: events.append((n, e)))
    assert runner.calls == ["pin", "stage", "verify", "load", "promote"]
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None and stored.status == "done"
    assert all(r.status == "done" for r in stored.steps)
    assert stored.history[-1]["version"] == 2 and stored.history[-1]["previous"] == 1
    assert events[0] == ("pin", "start") and events[-1] == ("promote", "done")


def test_a_failing_step_restores_and_raises_with_evidence(tmp_path: Path) -> None:
    """A failed verify removes the staged version and restores the spec, then raises naming the
    step and carrying the evidence; the journal says failed."""
    runner = FakeRunner(fail_at="verify")
    journal = new_journal()
    with pytest.raises(RolloutError) as caught:
        apply(journal, runner, save=saver(tmp_path))
    assert runner.calls == ["pin", "stage", "verify", "remove_version", "restore"]
    assert caught.value.step == "verify"
    assert "got 3.5" in str(caught.value)
    assert "restored" in str(caught.value)
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None and stored.status == "failed"
    assert stored.record("verify") is not None and stored.record("verify").status == "failed"  # type: ignore[union-attr]


def test_a_failure_after_load_unloads_before_removing_the_directory(tmp_path: Path) -> None:
    """When promote fails the server already has N: unload it, remove it, restore the spec."""
    runner = FakeRunner(fail_at="promote")
    with pytest.raises(RolloutError):
        apply(new_journal(), runner, save=saver(tmp_path))
    assert runner.calls[-3:] == ["unload", "remove_version", "restore"]


def test_a_non_tfstack_exception_is_also_restored_and_reported(tmp_path: Path) -> None:
    """An unexpected exception (bug, OSError) still restores and becomes a RolloutError."""

    class Broken(FakeRunner):
        def verify(self, step: Step, journal: Journal) -> str:
            raise OSError("disk full")

    runner = Broken()
    with pytest.raises(RolloutError, match="disk full"):
        apply(new_journal(), runner, save=saver(tmp_path))
    assert runner.calls[-2:] == ["remove_version", "restore"]


def test_a_restore_that_fails_leaves_restore_failed(tmp_path: Path) -> None:
    """If undoing fails too, the journal says restore_failed and the error says to --abort."""

    class BadRestore(FakeRunner):
        def transition(self, step: Step, journal: Journal) -> str:
            if step.name == "restore":
                raise StackError("server gone")
            return super().transition(step, journal)

    with pytest.raises(RolloutError, match="--abort"):
        apply(new_journal(), BadRestore(fail_at="verify"), save=saver(tmp_path))
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None and stored.status == "restore_failed"


def test_an_interrupted_rollout_resumes_at_the_interrupted_step(tmp_path: Path) -> None:
    """Ctrl-C during verify leaves the journal running with verify running; applying the stored
    journal again re-runs verify and the rest, not pin or stage."""
    runner = FakeRunner(interrupt_at="verify")
    journal = new_journal()
    with pytest.raises(KeyboardInterrupt):
        apply(journal, runner, save=saver(tmp_path))
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None and stored.status == "running"
    assert stored.created_version_dir
    assert stored.steps[stored.next_index].step.name == "verify"
    resumed = FakeRunner()
    apply(stored, resumed, save=saver(tmp_path))
    assert resumed.calls == ["verify", "load", "promote"]
    final = read_journal(tmp_path, "p", "m")
    assert final is not None and final.status == "done"


def test_aborting_an_interrupted_rollout_undoes_what_it_started(tmp_path: Path) -> None:
    """--abort after an interruption during load unloads, removes the directory, restores."""
    runner = FakeRunner(interrupt_at="load")
    journal = new_journal()
    with pytest.raises(KeyboardInterrupt):
        apply(journal, runner, save=saver(tmp_path))
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None
    undo = FakeRunner()
    run_abort(stored, undo, save=saver(tmp_path), say=lambda text: None)
    assert undo.calls == ["unload", "remove_version", "restore"]
    final = read_journal(tmp_path, "p", "m")
    assert final is not None and final.status == "aborted"


def test_dry_run_changes_nothing_and_prints_transitions(tmp_path: Path) -> None:
    """--dry-run prints the plan with config transitions; no effect runs, nothing is written."""
    runner = FakeRunner()
    lines: list[str] = []
    apply(new_journal(), runner, dry_run=True, save=saver(tmp_path), say=lines.append)
    assert runner.calls == []
    assert read_journal(tmp_path, "p", "m") is None
    assert any("->  specific [1, 2]; labels stable=2" in line for line in lines)


def test_retire_drains_before_unloading(tmp_path: Path) -> None:
    """The retire step sleeps for the drain period before its reload."""
    runner = FakeRunner()
    journal = new_journal(
        RolloutRequest("m", version=2, source="/s", keep_previous=False, drain_s=4.0)
    )
    apply(journal, runner, save=saver(tmp_path))
    assert runner.calls[-1] == "retire"
    assert runner.slept == [4.0]


def test_a_canary_rollout_ends_in_canary_state_without_history(tmp_path: Path) -> None:
    """A canary rollout is unfinished (status canary) and records no stable history yet."""
    journal = new_journal(RolloutRequest("m", version=2, source="/s", canary=True))
    apply(journal, FakeRunner(), save=saver(tmp_path))
    stored = read_journal(tmp_path, "p", "m")
    assert stored is not None and stored.status == "canary"
    assert stored.history == []
