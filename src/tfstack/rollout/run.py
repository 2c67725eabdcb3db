"""``invoke rollout`` / ``rollback`` entry points: observe, plan, journal, apply."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.errors import RolloutError, UsageError
from tfstack.render.frontdoor import door_is_on
from tfstack.rollout.apply import Runner, Save, apply, describe_steps, run_abort
from tfstack.rollout.canary import check_traffic_prerequisites
from tfstack.rollout.journal import (
    Journal,
    Step,
    StepRecord,
    read_journal,
    write_journal,
)
from tfstack.rollout.plan import (
    Observed,
    RolloutRequest,
    plan,
    plan_abort,
    plan_rollback,
    previous_from_history,
)
from tfstack.rollout.runner import Context, StackRunner, state_of, versions_on_disk
from tfstack.serving.client import ModelRef, RestClient, ServingRequestError

# Observing and the entry points


def observe(context: Context, spec: Any) -> Observed:
    """The model's state in the spec, the versions AVAILABLE on every replica, the disk."""

    model = context.model_spec(spec)
    runner = StackRunner(context)
    served: set[int] | None = None
    for replica in runner.replicas(spec):
        with RestClient(replica.rest_url, timeout=10) as rest:
            try:
                states = rest.model_status(ModelRef(model.name))
            except ServingRequestError:
                states = []
            except OSError as exc:
                raise RolloutError(
                    f"the serving instance does not answer on {replica.rest_url}: {exc}",
                    model=model.name,
                    step="observe",
                    hint="start the stack with `invoke up`",
                ) from exc
        available = {s.version for s in states if s.available}
        served = available if served is None else served & available
    return Observed(
        model.name,
        state_of(model),
        tuple(sorted(served or ())),
        versions_on_disk(context.model_dir(spec)),
    )


OUTCOME_SCHEMA = "tfstack.rollout/v1"
"""``invoke rollout --json`` and ``invoke rollback --json``: ``schema`` (docs/json-output.md)."""


@dataclass
class Outcome:
    """What a rollout/rollback did: the journal, step timings and a one-line summary."""

    journal: Journal
    timings: dict[str, float]
    summary: str
    dry_run: bool = False

    def describe(self) -> list[str]:
        """What ``rollout``/``rollback`` print: the summary (a dry run printed its plan already)."""
        return [] if self.dry_run else [self.summary]

    def to_json(self) -> dict[str, Any]:
        """The outcome as a JSON-able document (schema ``tfstack.rollout/v1``)."""
        journal = self.journal
        return {
            "schema": OUTCOME_SCHEMA,
            "action": journal.action,
            "model": journal.model,
            "version": journal.version,
            "previous_stable": journal.previous_stable,
            "status": journal.status,
            "dry_run": self.dry_run,
            "summary": self.summary,
            "error": journal.error,
            "steps": [
                {
                    "name": record.step.name,
                    "status": record.status,
                    "detail": record.detail,
                    "started_at": record.started_at,
                    "finished_at": record.finished_at,
                    "seconds": self.timings.get(record.step.name),
                }
                for record in journal.steps
            ],
            "total_seconds": round(sum(self.timings.values()), 3),
        }


def _save_for(root: Path) -> Save:
    return lambda journal: write_journal(root, journal)


def _check_no_active(journal: Journal | None, model: str) -> None:
    if journal is None:
        return
    if journal.status == "running" and journal.process_alive() and journal.pid != os.getpid():
        raise RolloutError(
            f"a {journal.action} of this model is running (pid {journal.pid})",
            model=model,
            hint="wait for it, or check `invoke status`",
        )
    if journal.status == "running":
        raise RolloutError(
            f"an interrupted {journal.action} to version {journal.version} is in the journal",
            model=model,
            hint=f"`invoke rollout --model {model} --resume` to finish it or `--abort` to undo it",
        )
    if journal.status == "restore_failed":
        raise RolloutError(
            f"the last {journal.action} failed and could not restore the previous state",
            model=model,
            hint=f"fix the cause ({journal.error}), then `invoke rollout --model {model} --abort`",
        )


def _new_journal(
    context: Context,
    spec: Any,
    *,
    action: Any,
    version: int | None,
    observed: Observed,
    steps: Sequence[Step],
    previous: int | None,
    old: Journal | None,
) -> Journal:
    return Journal(
        project=spec.project,
        model=context.model,
        action=action,
        version=version,
        original=observed.spec_state,
        original_spec_text=context.spec_path.read_text(encoding="utf-8"),
        original_served=observed.served,
        previous_stable=previous,
        steps=[StepRecord(step) for step in steps],
        history=list(old.history) if old is not None else [],
    )


Observe = Callable[[Context, Any], Observed]
"""How a target observes the model (the compose replicas by default; the Swarm's tasks)."""


def run_rollout(
    context: Context,
    request: RolloutRequest,
    *,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    runner: Runner | None = None,
    on_step: Callable[[str, str, float], None] | None = None,
    observer: Observe = observe,
) -> Outcome:
    """``invoke rollout``: plan and apply a rollout, a promotion, a resume or an abort."""
    if resume and abort:
        raise UsageError("give --resume or --abort, not both")
    spec = context.load_spec(check_disk=False)
    context.model_spec(spec)
    root = context.root
    save = _save_for(root)
    runner = runner or StackRunner(context)
    old = read_journal(root, spec.project, context.model)
    if resume or abort:
        if old is None or old.status not in ("running", "restore_failed", "failed"):
            state = "no journal" if old is None else f"the last one is {old.status}"
            raise RolloutError(
                f"nothing to {'resume' if resume else 'abort'} ({state})", model=context.model
            )
        if old.status == "running" and old.process_alive() and old.pid != os.getpid():
            raise RolloutError(
                f"the {old.action} is still running (pid {old.pid})", model=context.model
            )
        if dry_run:
            steps = plan_abort(old) if abort else [r.step for r in old.steps[old.next_index :]]
            for line in describe_steps(steps, old.original):
                context.say(line)
            return Outcome(old, {}, "dry run: nothing changed", dry_run=True)
        if abort:
            old.pid = os.getpid()
            run_abort(old, runner, save=save, say=context.say)
            return Outcome(
                old,
                {},
                f"{old.action} to version {old.version} aborted; "
                f"{context.model} is back to {old.original.describe()}",
            )
        if old.status != "running":
            raise RolloutError(
                f"the last {old.action} ended {old.status}; it cannot be resumed",
                model=context.model,
                hint=f"`invoke rollout --model {context.model} --abort` restores the state",
            )
        old.pid = os.getpid()
        context.say(
            f"resuming the {old.action} to version {old.version} at step "
            f"{old.steps[old.next_index].step.name if old.next_index < len(old.steps) else '-'}"
        )
        result = apply(old, runner, save=save, say=context.say, on_step=on_step)
        return Outcome(old, result.timings, _summary(old))
    _check_no_active(old, context.model)
    if request.traffic:
        check_traffic_prerequisites(spec, context.model, door_on=door_is_on(spec))
    observed = observer(context, spec)
    steps = plan(request, observed)
    version = request.version
    if request.promote:
        version = observed.spec_state.labels.get("canary")
    journal = _new_journal(
        context,
        spec,
        action="promote" if request.promote else "rollout",
        version=version,
        observed=observed,
        steps=steps,
        previous=observed.stable
        if not request.promote
        else observed.spec_state.labels.get("stable"),
        old=old,
    )
    if dry_run:
        apply(journal, runner, dry_run=True, save=save, say=context.say)
        return Outcome(journal, {}, "dry run: nothing changed", dry_run=True)
    save(journal)
    result = apply(journal, runner, save=save, say=context.say, on_step=on_step)
    return Outcome(journal, result.timings, _summary(journal))


def run_rollback(
    context: Context,
    *,
    dry_run: bool = False,
    runner: Runner | None = None,
    on_step: Callable[[str, str, float], None] | None = None,
    observer: Observe = observe,
) -> Outcome:
    """``invoke rollback``: labels back on the previous version, the bad one unloaded."""
    spec = context.load_spec(check_disk=False)
    context.model_spec(spec)
    save = _save_for(context.root)
    runner = runner or StackRunner(context)
    old = read_journal(context.root, spec.project, context.model)
    _check_no_active(old if old is None or old.status != "canary" else None, context.model)
    observed = observer(context, spec)
    labels = observed.spec_state.labels
    stable = labels.get("stable")
    previous = previous_from_history(old.history, stable) if old is not None and stable else None
    steps = plan_rollback(context.model, observed, previous)
    canary = labels.get("canary")
    rolling_canary = canary is not None and canary != stable
    target = stable if rolling_canary else (previous or steps[-1].wait_available[0])
    bad = canary if rolling_canary else stable
    journal = _new_journal(
        context,
        spec,
        action="rollback",
        version=target,
        observed=observed,
        steps=steps,
        previous=bad,
        old=old,
    )
    if dry_run:
        apply(journal, runner, dry_run=True, save=save, say=context.say)
        return Outcome(journal, {}, "dry run: nothing changed", dry_run=True)
    save(journal)
    result = apply(journal, runner, save=save, say=context.say, on_step=on_step)
    return Outcome(journal, result.timings, _summary(journal))


def _summary(journal: Journal) -> str:
    last = journal.steps[-1].step.target if journal.steps else None
    state = last.describe() if last is not None else journal.original.describe()
    if journal.action == "rollback":
        return (
            f"rolled back {journal.model} from version {journal.previous_stable} to "
            f"{journal.version}: {state}"
        )
    if journal.status == "canary":
        return (
            f"{journal.model} version {journal.version} is the canary ({state}); "
            f"`invoke rollout --model {journal.model} --promote` makes it stable"
        )
    return f"{journal.model} version {journal.version} is stable: {state}"


__all__ = [
    "Context",
    "Observed",
    "RolloutRequest",
    "StackRunner",
    "apply",
    "plan",
    "plan_abort",
    "plan_rollback",
    "run_rollback",
    "run_rollout",
]
