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

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from tfstack.core.labels import LABEL_MODEL
from tfstack.errors import RolloutError, TfstackError
from tfstack.render.frontdoor import CONTAINER_CANARY_MAP, SERVING_SERVICE
from tfstack.render.swarm import canary_service_name, stack_name
from tfstack.rollout.canary import (
    CANARY_DRAIN_S,
    canary_config_text,
    check_traffic_prerequisites,
    gated_traffic_step,
    set_share,
)
from tfstack.rollout.journal import Journal, Step
from tfstack.rollout.plan import Observed, RolloutRequest
from tfstack.rollout.run import Outcome, run_rollback, run_rollout
from tfstack.rollout.runner import Context, StackRunner, state_of, versions_on_disk
from tfstack.serving.door import CANARY_BACKENDS, wait_replica_in_rotation
from tfstack.stack.swarm import (
    InspectedService,
    Manager,
    SwarmError,
    SwarmUpReport,
    canary_service,
    manager_url,
    probe_tasks,
    serving_service,
    swarm_up,
)
from tfstack.stack.swarm_canary import (
    CachedSwarmDoor,
    OverlayProbe,
    door_status,
    ensure_canary_config,
    plan_canary_service,
    remove_canary_service,
    start_canary_service,
    wait_canary_serving,
    warm_canary,
)
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
    serving = serving_service(manager, stack)
    if serving is None:
        raise RolloutError(
            f"stack {stack} is not deployed on {manager.url}",
            model=model.name,
            step="observe",
            hint="`./tfstack up --target swarm` first",
        )
    answers, error = probe_tasks(manager, serving.image, stack, spec)
    if error is not None:
        raise RolloutError(
            f"the serving tasks cannot be asked: {error}", model=model.name, step="observe"
        )
    served = served_everywhere(model.name, answers, spec.serving.replicas)
    return Observed(model.name, state_of(model), served, versions_on_disk(context.model_dir(spec)))


class SwarmRunner(StackRunner):
    """Stage and verify as for compose; a transition is a new model image rolled to every node.

    A weighted canary's steps look the door and the serving service up once per process (a
    traffic step paid a few CLI calls for each) and again when what was looked up fails; nothing
    of it goes into the journal, which a ``--resume`` in another process reads.
    """

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._door: CachedSwarmDoor | None = None
        self._serving: InspectedService | None = None  # the context's one stack

    def transition(self, step: Step, journal: Journal) -> str:
        assert step.target is not None
        context = self.context
        self.edit_spec(step, journal)
        started = time.monotonic()
        try:
            report = self._deploy_spec()
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

    # -- weighted canary (rollout --traffic) -----------------------------------------------------

    def _deploy_spec(self) -> SwarmUpReport:
        """``up --target swarm`` of the spec as it stands (the rollout's timeout, its output)."""
        context = self.context
        return swarm_up(
            context.spec_path,
            context.root,
            timeout=context.reload_timeout,
            say=lambda text: self.say(f"      {text}"),
        )

    def _swarm(self) -> tuple[Any, Manager, str]:
        spec = self.context.load_spec(check_disk=False)
        manager = Manager(manager_url(spec))
        manager.check()
        return spec, manager, stack_name(spec)

    def _serving_service(
        self, manager: Manager, stack: str, step: Step, *, fresh: bool = False
    ) -> InspectedService:
        """The serving service, looked up when ``fresh`` or not yet looked up in this process."""
        if fresh or self._serving is None:
            self._serving = serving_service(manager, stack)
            if self._serving is None:
                raise RolloutError(
                    f"stack {stack} has no serving service on {manager.url}",
                    model=self.context.model,
                    step=step.name,
                    hint="`./tfstack up --target swarm` first",
                )
        return self._serving

    def _door_of(self, manager: Manager, stack: str) -> CachedSwarmDoor:
        if self._door is None or (self._door.manager, self._door.stack) != (manager, stack):
            self._door = CachedSwarmDoor(manager, stack)
        return self._door

    @contextlib.contextmanager
    def _overlay_probe(
        self, manager: Manager, stack: str, project: str, step: Step
    ) -> Iterator[OverlayProbe]:
        """A probe container of the serving image (on every node already), removed on exit. If
        it does not start, the serving service is looked up again (updated, or the stack gone)
        and, when its image changed, the probe is started once more with the new one."""
        image = self._serving_service(manager, stack, step).image
        probe = OverlayProbe(manager, stack, project, image)
        try:
            probe.start()
        except SwarmError:
            current = self._serving_service(manager, stack, step, fresh=True).image
            if current == image:
                raise
            probe = OverlayProbe(manager, stack, project, current)
            probe.start()
        try:
            yield probe
        finally:
            probe.remove()

    def canary_start(self, step: Step, journal: Journal) -> str:
        assert step.version is not None
        context = self.context
        spec, manager, stack = self._swarm()
        check_traffic_prerequisites(spec, context.model, door_on=True)
        other = canary_service(manager, stack)
        other_model = other.labels.get(LABEL_MODEL) if other is not None else None
        if other is not None and other_model != context.model:
            raise RolloutError(
                f"a weighted canary of model {other_model} runs already (service "
                f"{canary_service_name(stack)}); one canary per stack at a time",
                model=context.model,
                step=step.name,
                hint="let that rollout finish, or abort it first",
            )
        # The door answers before anything changes (an old door without the API fails here).
        door = self._door_of(manager, stack)
        set_share(door, CONTAINER_CANARY_MAP, context.model, 0)
        self.say(f"      version {step.version}'s files to every node (in the model image)")
        try:
            swarm_up(
                context.spec_path,
                context.root,
                timeout=context.reload_timeout,
                say=lambda text: self.say(f"      {text}"),
                extra_versions={context.model: (step.version,)},
            )
        except TfstackError as exc:
            raise RolloutError(
                f"the Swarm did not take the model image with version {step.version}",
                model=context.model,
                version=step.version,
                step=step.name,
                evidence=str(exc).splitlines()[:12],
                hint=exc.hint,
            ) from exc
        text = canary_config_text(
            spec, context.spec_path, context.root, context.model, step.version
        )
        config_id, config_name = ensure_canary_config(manager, stack, spec.project, text)
        # Looked up again: the canary is a clone of the spec the deploy above left.
        serving = self._serving_service(manager, stack, step, fresh=True)
        plan = plan_canary_service(
            serving.item,
            stack=stack,
            project=spec.project,
            model=context.model,
            version=step.version,
            config_id=config_id,
            config_name=config_name,
        )
        start_canary_service(manager, plan, say=self.say)
        image = str(plan.task_template["ContainerSpec"]["Image"])
        address = wait_canary_serving(
            manager,
            spec,
            stack,
            image,
            model=context.model,
            version=step.version,
            timeout=context.reload_timeout,
            say=self.say,
        )
        with OverlayProbe(manager, stack, spec.project, image) as probe:
            warmed = warm_canary(
                probe, spec, context.spec_path, address, model=context.model, version=step.version
            )
        self.say(f"      canary warmed with {warmed} sample requests")
        wait_replica_in_rotation(
            lambda: door_status(door, {address: plan.name}),
            plan.name,
            timeout=context.reload_timeout,
            backends=CANARY_BACKENDS,
        )
        return f"{plan.name} serves version {step.version} at {address}; in the door's rotation"

    def traffic(self, step: Step, journal: Journal) -> str:
        assert step.version is not None
        context = self.context
        spec, manager, stack = self._swarm()
        slo = check_traffic_prerequisites(spec, context.model, door_on=True)
        door = self._door_of(manager, stack)
        canary = f"tasks.{canary_service_name(stack)}"
        stable = f"tasks.{SERVING_SERVICE}"
        with self._overlay_probe(manager, stack, spec.project, step) as probe:
            found = probe.resolve(canary, stable)
            if not found[canary]:
                raise RolloutError(
                    f"the canary service {canary_service_name(stack)} has no running task",
                    model=context.model,
                    version=step.version,
                    step=step.name,
                    hint=f"`invoke rollout --model {context.model} --resume` starts it again; "
                    "`--abort` undoes the rollout",
                )
            port, path = spec.serving.rest_port, spec.monitoring.path
            return gated_traffic_step(
                door,
                slo,
                model=context.model,
                version=step.version,
                percent=step.percent,
                step_name=step.name,
                window_s=step.analysis_s or float(slo.window_seconds),
                candidate_urls=[f"http://{ip}:{port}{path}" for ip in found[canary]],
                stable_urls=[f"http://{ip}:{port}{path}" for ip in found[stable]],
                read=probe.read,
                say=self.say,
            )

    def canary_stop(self, step: Step, journal: Journal) -> str:
        context = self.context
        _spec, manager, stack = self._swarm()
        try:
            set_share(self._door_of(manager, stack), CONTAINER_CANARY_MAP, context.model, 0)
        except TfstackError as exc:
            # A door that is down sends nothing anywhere; one that restarted has no share.
            self.say(f"      door: share not reset ({exc.message}); removing the canary anyway")
        time.sleep(CANARY_DRAIN_S)  # requests the door sent before the reset finish
        removed = remove_canary_service(manager, stack)
        # canary_start deployed a model image with the candidate beside the served versions; the
        # spec's own image goes back (after promote it is that one already: a noop), so an
        # aborted canary leaves the Swarm exactly as `up` makes it.
        try:
            models = f"the spec's model image ({self._deploy_spec().action})"
        except TfstackError as exc:
            # Harmless (no server loads the candidate's files): said, and the undo goes on.
            models = f"the candidate's model image left deployed ({exc.message})"
            self.say(f"      {models}; the next `up` replaces it")
        return f"door share 0; {removed}; {models}"


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
