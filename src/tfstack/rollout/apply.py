"""Applying a rollout's steps through a :class:`Runner`, recording each in the journal.

A failed step puts everything back (the steps' undo, in reverse) and leaves the journal saying
what happened; ``--abort`` does the same for an interrupted rollout.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tfstack.core.progress import Say
from tfstack.errors import RolloutError, TfstackError
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
    StepRecord,
    now_iso,
)
from tfstack.rollout.plan import plan_abort

# Applying


class Runner(Protocol):
    """The effects of each step kind; :class:`StackRunner` is the real one."""

    def transition(self, step: Step, journal: Journal) -> str: ...

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str: ...

    def verify(self, step: Step, journal: Journal) -> str: ...

    def remove_version(self, step: Step, journal: Journal) -> str: ...

    def canary_start(self, step: Step, journal: Journal) -> str: ...

    def traffic(self, step: Step, journal: Journal) -> str: ...

    def canary_stop(self, step: Step, journal: Journal) -> str: ...

    def sleep(self, seconds: float) -> None: ...


Save = Callable[[Journal], None]


def describe_steps(steps: Sequence[Step], start: ModelState) -> list[str]:
    """The plan as text with every config transition (``--dry-run``)."""
    lines: list[str] = []
    state = start
    for index, step in enumerate(steps, 1):
        lines.append(f"[{index}/{len(steps)}] {step.name}: {step.description}")
        if step.kind == "transition" and step.target is not None:
            lines.append(f"      config: {state.describe()}")
            lines.append(f"          ->  {step.target.describe()}")
            if step.wait_available:
                lines.append(f"      wait: versions {list(step.wait_available)} AVAILABLE")
            state = step.target
    return lines


def _run_step(runner: Runner, step: Step, journal: Journal, save: Save) -> str:
    if step.kind == "transition":
        if step.drain_s > 0:
            runner.sleep(step.drain_s)
        return runner.transition(step, journal)
    if step.kind == "stage":

        def mark_created() -> None:
            journal.created_version_dir = True
            save(journal)

        return runner.stage(step, journal, mark_created)
    if step.kind == "verify":
        return runner.verify(step, journal)
    if step.kind == "remove_version":
        return runner.remove_version(step, journal)
    if step.kind == "canary_start":
        return runner.canary_start(step, journal)
    if step.kind == "traffic":
        return runner.traffic(step, journal)
    if step.kind == "canary_stop":
        return runner.canary_stop(step, journal)
    raise RolloutError(f"unknown step kind {step.kind!r}", model=journal.model, step=step.name)


@dataclass
class ApplyResult:
    journal: Journal
    timings: dict[str, float] = field(default_factory=dict)  # step name -> seconds
    restored: bool = False


def apply(
    journal: Journal,
    runner: Runner,
    *,
    dry_run: bool = False,
    save: Save,
    say: Say = lambda text: None,
    clock: Callable[[], float] = time.monotonic,
    on_step: Callable[[str, str, float], None] | None = None,
) -> ApplyResult:
    """Run the journal's steps from the first unfinished one; print each as it happens.

    ``on_step(name, "start"|"done", clock())`` lets tests and benchmarks line steps up with the
    load generator. A failing step marks the journal failed, runs :func:`plan_abort`'s steps to
    restore the previous state and raises RolloutError with the step's evidence. Ctrl-C leaves the
    journal ``running`` (resume or abort later).
    """
    result = ApplyResult(journal)
    steps = [record.step for record in journal.steps]
    if dry_run:
        for line in describe_steps(steps, journal.original):
            say(line)
        say("dry run: nothing changed")
        return result
    total = len(journal.steps)
    for index in range(journal.next_index, total):
        record = journal.steps[index]
        step = record.step
        say(f"[{index + 1}/{total}] {step.name}: {step.description}")
        record.status = "running"
        record.started_at = now_iso()
        save(journal)
        started = clock()
        if on_step is not None:
            on_step(step.name, "start", started)
        try:
            record.detail = _run_step(runner, step, journal, save)
        except TfstackError as exc:
            _after_failure(
                journal, record, exc=exc, runner=runner, save=save, say=say, result=result
            )
            raise _failure_error(journal, step, exc, result) from exc
        except KeyboardInterrupt:
            say(
                f"interrupted during {step.name}: the journal keeps the rollout; run "
                f"`invoke rollout --model {journal.model} --resume` or `--abort`"
            )
            raise
        except Exception as exc:
            _after_failure(
                journal, record, exc=exc, runner=runner, save=save, say=say, result=result
            )
            raise _failure_error(journal, step, exc, result) from exc
        finished = clock()
        result.timings[step.name] = finished - started
        if on_step is not None:
            on_step(step.name, "done", finished)
        record.status = "done"
        record.finished_at = now_iso()
        save(journal)
        if record.detail:
            say(f"      {record.detail}")
    _finish(journal)
    save(journal)
    return result


def _finish(journal: Journal) -> None:
    canary = journal.action == "rollout" and any(
        r.step.name == "promote" and r.step.target is not None and "canary" in r.step.target.labels
        for r in journal.steps
    )
    journal.status = "canary" if canary else "done"
    journal.error = None
    if journal.action in ("rollout", "promote") and not canary:
        journal.history.append(
            {"version": journal.version, "previous": journal.previous_stable, "at": now_iso()}
        )
    elif journal.action == "rollback":
        journal.history.append(
            {"rolled_back": journal.previous_stable, "to": journal.version, "at": now_iso()}
        )


def _after_failure(
    journal: Journal,
    record: StepRecord,
    *,
    exc: BaseException,
    runner: Runner,
    save: Save,
    say: Say,
    result: ApplyResult,
) -> None:
    record.status = "failed"
    record.finished_at = now_iso()
    record.detail = str(exc)
    journal.error = f"step {record.step.name} failed: {exc}"
    journal.status = "failed"
    save(journal)
    say(f"step {record.step.name} failed; restoring the previous state")
    try:
        run_abort(journal, runner, save=save, say=say)
        result.restored = True
    except TfstackError as restore_exc:
        say(f"restoring failed too: {restore_exc}")


def _failure_error(
    journal: Journal, step: Step, exc: BaseException, result: ApplyResult
) -> RolloutError:
    evidence = list(exc.evidence) if isinstance(exc, RolloutError) else []
    message = exc.message if isinstance(exc, TfstackError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RolloutError):
        first = str(exc).split("\n", 1)[0]
        message = first.split(": ", 1)[1] if first.startswith("model ") and ": " in first else first
    restored = (
        "the previous config, labels and versions were restored"
        if result.restored
        else "RESTORING FAILED: run `invoke rollout --model "
        f"{journal.model} --abort` after fixing the cause"
    )
    return RolloutError(
        f"{message}\n  ({restored})",
        model=journal.model,
        version=journal.version,
        step=step.name,
        evidence=evidence,
        hint=exc.hint if isinstance(exc, TfstackError) and exc.hint else None,
    )


def run_abort(journal: Journal, runner: Runner, *, save: Save, say: Say) -> None:
    """Undo what the journal's started steps did; status ``aborted``/``failed`` or
    ``restore_failed``."""
    steps = plan_abort(journal)
    for index, step in enumerate(steps, 1):
        say(f"[undo {index}/{len(steps)}] {step.name}: {step.description}")
        try:
            detail = _run_step(runner, step, journal, save)
        except TfstackError:
            journal.status = "restore_failed"
            save(journal)
            raise
        if detail:
            say(f"      {detail}")
    if journal.status != "failed":
        journal.status = "aborted"
    save(journal)
