"""``rollout | rollback --target swarm``: the compose rollout's steps and guarantees on a Swarm.

The steps are the compose target's (:mod:`tfstack.rollout.plan`: pin, stage, verify in a side
instance, load, promote, retire; the journal, ``--resume`` and ``--abort``); only how a step reaches
the servers differs. On a Swarm the models travel in the model image (docs/swarm.md), so a
*transition* (a new policy or label set for the model) is:

1. the spec edited (comments kept) and validated, exactly as for compose;
2. ``swarm_up``: a new model image (the served versions + the rendered models.config, tagged by
   content) pushed, ``docker stack deploy`` -- only the ``models`` service changes: its task on
   every node adds the new version directories to the node's volume (never rewriting a file) and
   swaps models.config by rename; every serving task re-reads models.config within
   ``config_poll_seconds`` (a hot reload, no restart, no dropped connection);
3. a wait, task by task on the overlay (never through the balancer), until every task serves every
   declared version and every label resolves to its version; then the samples through the door.

The label move is two transitions (``load``: serve the old and the new version, labels unchanged;
``promote``: move the label once every task has the new version AVAILABLE), so no task ever
resolves a label to a version it has not loaded. *stage* and *verify* run on this machine, which
holds the model repository the model image is packed from (the side instance uses the same server
image as the Swarm). This module sits in the stack layer, above :mod:`tfstack.rollout`, because it
drives the Swarm through :mod:`tfstack.stack.swarm`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tfstack.errors import RolloutError, TfstackError
from tfstack.render.frontdoor import SERVING_SERVICE
from tfstack.render.swarm import stack_name
from tfstack.rollout.journal import Journal, Step
from tfstack.rollout.plan import Observed, RolloutRequest
from tfstack.rollout.run import Outcome, run_rollback, run_rollout
from tfstack.rollout.runner import Context, StackRunner, state_of, versions_on_disk
from tfstack.stack.swarm import Manager, manager_url, probe_tasks, service_ids, swarm_up
from tfstack.stack.swarm_probe import TaskModels


def served_everywhere(model: str, answers: list[TaskModels], replicas: int) -> tuple[int, ...]:
    """The versions of ``model`` AVAILABLE on every task (pure); RolloutError when a task is
    missing or cannot say."""
    if len(answers) < replicas:
        raise RolloutError(
            f"only {len(answers)} of {replicas} serving tasks answer",
            model=model,
            step="observe",
            hint="`./tfstack status --target swarm` shows the tasks; wait until all run",
        )
    served: set[int] | None = None
    for task in answers:
        if model in task.errors:
            raise RolloutError(
                f"task {task.address} does not report the model: {task.errors[model]}",
                model=model,
                step="observe",
            )
        available = {v for v, state in task.versions.get(model, {}).items() if state == "AVAILABLE"}
        served = available if served is None else served & available
    return tuple(sorted(served or ()))


def observe_swarm(context: Context, spec: Any) -> Observed:
    """The model in the spec, the versions AVAILABLE on every serving task, the disk."""
    model = context.model_spec(spec)
    manager = Manager(manager_url(spec))
    manager.check()
    stack = stack_name(spec)
    if SERVING_SERVICE not in service_ids(manager, stack):
        raise RolloutError(
            f"stack {stack} is not deployed on {manager.url}",
            model=model.name,
            step="observe",
            hint="`./tfstack up --target swarm` first",
        )
    inspected = json.loads(manager.run("service", "inspect", f"{stack}_{SERVING_SERVICE}"))
    image = inspected[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    answers, error = probe_tasks(manager, image, stack, spec)
    if error is not None:
        raise RolloutError(
            f"the serving tasks cannot be asked: {error}", model=model.name, step="observe"
        )
    served = served_everywhere(model.name, answers, spec.serving.replicas)
    return Observed(model.name, state_of(model), served, versions_on_disk(context.model_dir(spec)))


class SwarmRunner(StackRunner):
    """Stage and verify as for compose; a transition is a new model image rolled to every node."""

    def transition(self, step: Step, journal: Journal) -> str:
        assert step.target is not None
        context = self.context
        self.edit_spec(step, journal)
        started = time.monotonic()
        try:
            report = swarm_up(
                context.spec_path,
                context.root,
                timeout=context.reload_timeout,
                say=lambda text: self.say(f"      {text}"),
            )
        except TfstackError as exc:
            raise RolloutError(
                f"the Swarm did not take {step.target.describe()}",
                model=context.model,
                step=step.name,
                evidence=str(exc).splitlines()[:12],
                hint=exc.hint,
            ) from exc
        tasks = len(report.tasks)
        return (
            f"{step.target.describe()} on {tasks} task{'s' if tasks != 1 else ''} "
            f"({report.action}) in {time.monotonic() - started:.2f}s"
        )


def swarm_rollout(
    context: Context,
    request: RolloutRequest,
    *,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    on_step: Any = None,
) -> Outcome:
    """``rollout --target swarm``: :func:`tfstack.rollout.run.run_rollout` with the Swarm runner."""
    return run_rollout(
        context,
        request,
        dry_run=dry_run,
        resume=resume,
        abort=abort,
        runner=SwarmRunner(context),
        on_step=on_step,
        observer=observe_swarm,
    )


def swarm_rollback(context: Context, *, dry_run: bool = False, on_step: Any = None) -> Outcome:
    """``rollback --target swarm``: labels back on the previous version, the bad one unloaded."""
    return run_rollback(
        context,
        dry_run=dry_run,
        runner=SwarmRunner(context),
        on_step=on_step,
        observer=observe_swarm,
    )


__all__ = ["SwarmRunner", "observe_swarm", "served_everywhere", "swarm_rollback", "swarm_rollout"]
