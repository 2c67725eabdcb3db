"""The real runner: spec, models.config, serving replicas, side instance.

:class:`StackRunner` performs each :class:`~tfstack.rollout.journal.Step` against the running
stack: spec edits (comments kept), rendering, gRPC reloads of every replica, waiting, staging and
the side-instance verification.
"""

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack import render
from tfstack.core.files import write_files_atomically
from tfstack.core.labels import LABEL_MODEL
from tfstack.core.progress import Say
from tfstack.core.versions import version_dirs
from tfstack.docker.compose import ComposeProject, Replica, Stack, container_info, replicas
from tfstack.docker.engine import ensure_engine
from tfstack.errors import RolloutError, SpecError, TfstackError, UsageError
from tfstack.render.applied import record_applied
from tfstack.render.frontdoor import CONTAINER_CANARY_MAP, SERVING_SERVICE, door_is_on
from tfstack.rollout.canary import (
    CANARY_CONFIG,
    CANARY_DRAIN_S,
    WARMUP_TIMEOUT_S,
    canary_config_text,
    canary_replica,
    check_traffic_prerequisites,
    door_container,
    existing_canary,
    gated_traffic_step,
    metrics_url,
    plan_canary,
    remove_canary,
    rest_warmup_post,
    set_share,
    start_canary,
    warm_up_canary,
    warmup_requests,
)
from tfstack.rollout.door import ask_labels_through_door, await_rotation, replicas_behind_door
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
)
from tfstack.rollout.plan import RELOAD_TIMEOUT_S
from tfstack.rollout.staging import (
    clean_leftovers,
    existing_version_dir,
    remove_version_dir,
    stage_version,
)
from tfstack.rollout.verify import plan_side_instance, remove_verifiers, verify_candidate
from tfstack.serving.client import GrpcClient, RestClient, ServingRequestError
from tfstack.serving.door import (
    CANARY_BACKENDS,
    frontend_container,
    read_door_stats,
    wait_replica_in_rotation,
)
from tfstack.serving.endpoints import endpoints_for
from tfstack.serving.waiting import ModelExpectation, ModelsReady, Poll
from tfstack.spec import load_spec, model_host_dir
from tfstack.spec.edit import set_model_state
from tfstack.spec.model import sample_body

# The real runner: spec, models.config, serving replicas, side instance


@dataclass
class Context:
    """One rollout's surroundings: the spec, the project root, the engine, output."""

    spec_path: Path
    root: Path
    model: str
    client: Any = None
    say: Say = lambda text: None
    reload_timeout: float = RELOAD_TIMEOUT_S

    def docker(self) -> Any:
        if self.client is None:
            self.client = ensure_engine(say=self.say)
        return self.client

    def load_spec(self, *, check_disk: bool = True) -> Any:
        return load_spec(self.spec_path, check_disk=check_disk, project_root=self.root)

    def model_spec(self, spec: Any) -> Any:
        for model in spec.models:
            if model.name == self.model:
                return model
        known = ", ".join(m.name for m in spec.models)
        raise UsageError(f"the spec has no model {self.model!r} (models: {known})")

    def model_dir(self, spec: Any) -> Path:
        return Path(model_host_dir(spec, self.spec_path, self.model_spec(spec)))


def state_of(model: Any) -> ModelState:
    """A spec ModelSpec's policy and labels as a ModelState."""
    return ModelState(model.policy.model_dump(), dict(model.labels))


def versions_on_disk(model_dir: Path) -> tuple[int, ...]:
    """The versions (numbers, ascending, once each) of the version directories in ``model_dir``."""
    try:
        return tuple(sorted({found.version for found in version_dirs(model_dir)}))
    except OSError:
        return ()


def replicas_of(spec: Any, containers: Sequence[Any]) -> list[Replica]:
    """Each running serving container's published REST and gRPC ports (its own, per replica);
    the spec's ports when no container is known (a server started some other way)."""

    endpoints = endpoints_for(spec)
    found = replicas(
        containers,
        host=endpoints.host,
        rest_port=spec.serving.rest_port,
        grpc_port=spec.serving.grpc_port,
    )
    if not found:
        return [Replica("serving", endpoints.rest_url, endpoints.grpc_target)]
    return found


class StackRunner:
    """Runs steps against the real stack (see :class:`Runner`)."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def say(self) -> Say:
        return self.context.say

    def sleep(self, seconds: float) -> None:
        self.say(f"      draining for {seconds:g}s")
        time.sleep(seconds)

    def replicas(self, spec: Any) -> list[Replica]:
        if door_is_on(spec):
            # Behind the door: each replica at its own address, never the balancer.
            return replicas_behind_door(
                self.context.docker(), spec, self._containers(spec), model=self.context.model
            )
        try:
            stack = Stack(
                ComposeProject.for_root(spec.project, self.context.root), self.context.docker()
            )
            containers = stack.service_containers("serving")
        except TfstackError:
            containers = []
        return replicas_of(spec, containers)

    def _containers(self, spec: Any) -> list[Any]:
        project = ComposeProject.for_root(spec.project, self.context.root)
        return Stack(project, self.context.docker()).containers()

    # -- transition -------------------------------------------------------------------------

    def _write_spec(self, text: str) -> None:
        path = self.context.spec_path.resolve()
        write_files_atomically(path.parent, {path.name: text})

    def edit_spec(self, step: Step, journal: Journal) -> Any:
        """Write the step's policy and labels (or the original spec) into the spec; the spec,
        validated against the disk (put back and RolloutError when it does not validate)."""
        assert step.target is not None
        context = self.context
        before = context.spec_path.read_text(encoding="utf-8")
        if step.restore_original:
            text = journal.original_spec_text
        else:
            text = set_model_state(
                before, context.model, policy=step.target.policy, labels=step.target.labels
            )
        self._write_spec(text)
        try:
            spec = context.load_spec(check_disk=True)
        except SpecError as exc:
            self._write_spec(before)
            raise RolloutError(
                "the edited spec does not validate; it was put back",
                model=context.model,
                step=step.name,
                evidence=[str(p) for p in exc.problems],
            ) from exc
        return spec

    def transition(self, step: Step, journal: Journal) -> str:
        assert step.target is not None
        context = self.context
        spec = self.edit_spec(step, journal)
        files = render.render_stack(spec, context.spec_path, context.root)
        config_text = files[render.MODELS_CONFIG]
        write_files_atomically(context.root, {render.MODELS_CONFIG: config_text})
        replicas = self.replicas(spec)
        labels = dict(step.target.labels)
        started = time.monotonic()
        door = door_is_on(spec)
        for index, replica in enumerate(replicas, 1):
            self._reload(replica, config_text, step, labels)
            if door and index < len(replicas):
                await_rotation(
                    context.docker(),
                    lambda: self._containers(spec),
                    spec,
                    replica,
                    timeout=context.reload_timeout,
                )
        record_applied(context.root, config_text)
        where = f"{len(replicas)} replica{'s' if len(replicas) != 1 else ''}"
        detail = f"{step.target.describe()} on {where} in {time.monotonic() - started:.2f}s"
        if door:
            model = context.model_spec(spec)
            samples = [(s, sample_body(s, context.spec_path)) for s in model.samples]
            asked = ask_labels_through_door(
                spec,
                context.spec_path,
                context.model,
                labels,
                samples,
                replicas=len(replicas),
                step=step.name,
            )
            detail += f"; {asked}" if asked else ""
        return detail

    def _reload(
        self, replica: Replica, config_text: str, step: Step, labels: Mapping[str, int]
    ) -> None:

        context = self.context
        with GrpcClient(replica.grpc_target, timeout=context.reload_timeout) as grpc_client:
            try:
                grpc_client.reload_config(config_text, timeout=context.reload_timeout)
            except ServingRequestError as exc:
                raise RolloutError(
                    f"{replica.name} rejected the new model config",
                    model=context.model,
                    step=step.name,
                    evidence=[exc.message],
                ) from exc
        # Labels whose version must be AVAILABLE; the others may be loading still.
        expectation = ModelExpectation(context.model, step.wait_available, dict(labels))
        with RestClient(replica.rest_url, timeout=10) as rest:
            try:
                ModelsReady(
                    rest, [expectation], Poll(timeout=context.reload_timeout, interval=0.1)
                ).wait()
            except TfstackError as exc:
                raise RolloutError(
                    f"{replica.name}: versions {list(step.wait_available)} and labels "
                    f"{dict(labels)} not ready",
                    model=context.model,
                    step=step.name,
                    evidence=str(exc).splitlines()[:12],
                ) from exc
        self.say(f"      {replica.name}: {step.target.describe() if step.target else ''} ready")

    # -- stage, verify, remove ------------------------------------------------------------------

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str:
        assert step.version is not None
        spec = self.context.load_spec(check_disk=False)
        model_dir = self.context.model_dir(spec)
        source: Path | None = Path(step.source) if step.source else None
        if journal.created_version_dir and existing_version_dir(model_dir, step.version):
            source = None  # renamed before an interruption: check it in place
        result = stage_version(
            source,
            model_dir,
            step.version,
            current=step.compare_with,
            allow_signature_change=step.allow_signature_change,
            model=self.context.model,
            before_rename=mark_created,
            say=self.say,
        )
        for warning in result.warnings:
            self.say(f"      warning: {warning}")
        names = ", ".join(sorted(result.signatures))
        return f"{result.version_dir} in place; signatures: {names}"

    def verify(self, step: Step, journal: Journal) -> str:
        assert step.version is not None and step.compare_with is not None
        spec = self.context.load_spec(check_disk=False)
        model = self.context.model_spec(spec)
        samples = [(s, sample_body(s, self.context.spec_path)) for s in model.samples]
        plan_ = plan_side_instance(
            spec,
            self.context.model_dir(spec),
            model.name,
            stable=step.compare_with,
            candidate=step.version,
        )
        report = verify_candidate(
            self.context.docker(),
            plan_,
            samples,
            latency_factor=step.latency_factor,
            say=lambda text: self.say(f"      {text}"),
        )
        parts = [f"loaded in {report.ready_s:.1f}s", f"{report.samples_checked} samples ok"]
        if report.latency is not None:
            parts.append(report.latency.describe())
        parts += report.notes
        return "; ".join(parts)

    def remove_version(self, step: Step, journal: Journal) -> str:
        assert step.version is not None
        spec = self.context.load_spec(check_disk=False)
        model_dir = self.context.model_dir(spec)
        removed = []
        if journal.created_version_dir and remove_version_dir(model_dir, step.version):
            removed.append(str(step.version))
        removed += clean_leftovers(model_dir)
        with contextlib.suppress(Exception):
            removed += remove_verifiers(self.context.docker(), spec.project, self.context.model)
        return "removed " + (", ".join(removed) if removed else "nothing (none left)")

    # -- weighted canary (rollout --traffic) -----------------------------------------------------

    def _canary(self, spec: Any, step: Step) -> Replica:
        client = self.context.docker()
        canary = existing_canary(client, spec.project)
        if canary is None or canary.status != "running":
            raise RolloutError(
                "the canary replica is not running",
                model=self.context.model,
                version=step.version,
                step=step.name,
                hint=f"`invoke rollout --model {self.context.model} --resume` starts it again; "
                "`--abort` undoes the rollout",
            )
        serving = spec.serving
        return canary_replica(
            client, canary, rest_port=serving.rest_port, grpc_port=serving.grpc_port
        )

    def canary_start(self, step: Step, journal: Journal) -> str:
        assert step.version is not None
        context = self.context
        spec = context.load_spec(check_disk=False)
        check_traffic_prerequisites(spec, context.model, door_on=door_is_on(spec))
        client = context.docker()
        containers = self._containers(spec)
        other = existing_canary(client, spec.project)
        if other is not None and other.labels.get(LABEL_MODEL) != context.model:
            raise RolloutError(
                f"a weighted canary of model {other.labels.get(LABEL_MODEL)} runs already "
                f"(container {other.name}); one canary per stack at a time",
                model=context.model,
                step=step.name,
                hint="let that rollout finish, or abort it first",
            )
        running = [c for c in containers if c.service == SERVING_SERVICE and c.state == "running"]
        if not running:
            raise RolloutError(
                "no serving replica is running to clone the canary from",
                model=context.model,
                step=step.name,
                hint="`invoke up` starts the stack",
            )
        text = canary_config_text(
            spec, context.spec_path, context.root, context.model, step.version
        )
        write_files_atomically(context.root, {CANARY_CONFIG: text})
        plan = plan_canary(
            client.containers.get(running[0].id).attrs,
            project=spec.project,
            model=context.model,
            version=step.version,
        )
        door = door_container(client, containers)
        # The runtime API answers before anything starts (an old door without it fails here).
        set_share(door, CONTAINER_CANARY_MAP, context.model, 0)
        replica = start_canary(
            client,
            plan,
            model=context.model,
            version=step.version,
            rest_port=spec.serving.rest_port,
            grpc_port=spec.serving.grpc_port,
            timeout=context.reload_timeout,
            say=self.say,
        )
        # Warmed while the share is 0 and before the traffic steps read their first metrics:
        # its lazy initialisation is neither charged to the candidate nor in any window.
        samples = warmup_requests(
            spec, context.spec_path, model=context.model, version=step.version
        )
        with RestClient(replica.rest_url, timeout=WARMUP_TIMEOUT_S) as rest:
            warmed = warm_up_canary(
                rest_warmup_post(rest),
                samples,
                model=context.model,
                version=step.version,
                canary=f"the canary replica {plan.name}",
                logs=f"docker logs {plan.name}",
                step=step.name,
            )
        warmth = f"warmed with {warmed} sample requests" if samples else "not warmed (no samples)"
        self.say(f"      canary {warmth}")
        canary = existing_canary(client, spec.project)
        door_info = frontend_container(containers)
        assert canary is not None and door_info is not None  # both just answered
        wait_replica_in_rotation(
            lambda: read_door_stats(
                client, door_info, [container_info(canary)], stats_port=spec.frontend.stats_port
            ),
            canary.name,
            timeout=context.reload_timeout,
            backends=CANARY_BACKENDS,
        )
        where = replica.rest_url
        return (
            f"{plan.name} serves version {step.version} at {where}; {warmth}; in the door's "
            "rotation"
        )

    def traffic(self, step: Step, journal: Journal) -> str:
        assert step.version is not None
        context = self.context
        spec = context.load_spec(check_disk=False)
        slo = check_traffic_prerequisites(spec, context.model, door_on=door_is_on(spec))
        canary_at = self._canary(spec, step)
        stable_at = self.replicas(spec)
        door = door_container(context.docker(), self._containers(spec))
        path = spec.monitoring.path
        return gated_traffic_step(
            door,
            slo,
            model=context.model,
            version=step.version,
            percent=step.percent,
            step_name=step.name,
            window_s=step.analysis_s or float(slo.window_seconds),
            candidate_urls=[metrics_url(canary_at, path)],
            stable_urls=[metrics_url(r, path) for r in stable_at],
            say=self.say,
        )

    def canary_stop(self, step: Step, journal: Journal) -> str:
        context = self.context
        spec = context.load_spec(check_disk=False)
        client = context.docker()
        try:
            door = door_container(client, self._containers(spec))
            set_share(door, CONTAINER_CANARY_MAP, context.model, 0)
        except TfstackError as exc:
            # A door that is down sends nothing anywhere; one that restarted has no share.
            self.say(f"      door: share not reset ({exc.message}); removing the canary anyway")
        time.sleep(CANARY_DRAIN_S)  # requests the door sent before the reset finish
        detail = remove_canary(client, spec.project)
        (context.root / CANARY_CONFIG).unlink(missing_ok=True)
        return f"door share 0; {detail}"
