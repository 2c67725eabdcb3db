"""``invoke up`` / ``down``: from ``config/stack.yaml`` to a serving stack, idempotently.

Plan, then apply. :func:`plan_up` is pure: given what runs (container config hashes, image, the
model config the server last accepted, whether every model is ready) it decides one action:

- ``start``: nothing runs yet (or the container stopped): ``docker compose up``;
- ``recreate``: server flags, mounts, ports or the image changed: ``docker compose up`` recreates;
- ``reload``: only models, labels or policies changed: the new ``ModelServerConfig`` is sent with
  gRPC ``HandleReloadConfigRequest`` (works with the official server too); no restart. Labels that
  would point at versions not AVAILABLE yet are held back for a second reload (contract section 4);
- ``noop``: nothing changed; nothing is touched.

:func:`up` performs it: validate → demo models → render (atomic) → image → plan → ISA guard and
port check → compose up or reload → wait for every declared version and label → smoke requests
from the spec's samples → status. :func:`down` removes exactly what tfstack created.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker.errors
import requests
from google.protobuf import text_format

from tfstack import render as render_module
from tfstack.build.frontend import ensure_frontend_image
from tfstack.build.images import ensure_image
from tfstack.build.isa import check_image_isa
from tfstack.build.prometheus import ensure_prometheus_image
from tfstack.core.files import write_files_atomically
from tfstack.core.progress import Say
from tfstack.docker.compose import (
    ComposeProject,
    Replica,
    Stack,
    port_conflicts,
    raise_for_conflicts,
    replicas,
)
from tfstack.docker.engine import ensure_engine
from tfstack.errors import StackError, TfstackError, UsageError
from tfstack.models.demo import plan_demo_models, write_demo_models
from tfstack.render.applied import forget_applied, read_applied, record_applied
from tfstack.render.frontdoor import check_haproxy_config, door_is_on
from tfstack.render.prometheus import check_prometheus_config, prometheus_on
from tfstack.rollout.journal import unfinished
from tfstack.serving.client import (
    GrpcClient,
    RestClient,
    ServingRequestError,
)
from tfstack.serving.door import (
    DoorStatus,
    direct_replicas,
    door_access,
    door_view,
    frontend_container,
    wait_in_rotation,
    wait_replica_in_rotation,
)
from tfstack.serving.endpoints import endpoints_for
from tfstack.serving.waiting import (
    LoadFailed,
    ModelExpectation,
    ModelsReady,
    Poll,
    Readiness,
    assess,
    observe_model,
)
from tfstack.spec import StackSpec, load_spec, model_repository_dir
from tfstack.spec.model import sample_body
from tfstack.stack.degraded import (
    START_FAILURES,
    config_without,
    forget_start_failures,
    parse_start_failures,
    read_start_failures,
    record_start_failures,
)
from tfstack.stack.plan import (
    DEFAULT_TIMEOUT_S,
    RELOAD_TIMEOUT_S,
    SERVICE,
    Loaded,
    Observed,
    UpAction,
    UpPlan,
    load,
    plan_reload,
    plan_up,
    project_root_for,
    step_config_text,
)
from tfstack.stack.smoke import SmokeResult, raise_for_smoke, smoke
from tfstack.stack.status import (
    StackStatus,
    StartFailure,
    observe,
    render_table,
    with_start_failures,
)


@dataclass
class UpReport:
    plan: UpPlan
    status: StackStatus
    smoke: list[SmokeResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    sample: tuple[str, Any, Any] | None = None  # (request line, body, answer)
    dry_run: bool = False

    def describe(self) -> list[Any]:
        """What ``up`` prints: the plan for a dry run; else the status table (a rich renderable),
        the endpoints, one sample request and its answer, and the timings."""
        if self.dry_run:
            return [f"would {self.plan.describe()}"]
        endpoints = self.status.endpoints
        lines: list[Any] = [
            render_table(self.status),
            f"REST: {endpoints['rest']}   gRPC: {endpoints['grpc']}",
        ]
        if self.sample is not None:
            line, body, answer = self.sample
            lines += [f"sample: {line} {json.dumps(body)}", f"answer: {json.dumps(answer)}"]
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        total = sum(self.timings.values())
        lines.append(f"{self.plan.action.value} done in {total:.1f}s ({timings})")
        return lines


BLOCKING_ROLLOUT_STATES = ("running", "interrupted", "restore_failed")
"""Rollout journal states that stop ``up`` (a canary is a resting state: it does not)."""


def refuse_during_rollout(root: Path, project: str) -> None:
    """Raise when a rollout of the project is running, interrupted or failed to restore.

    ``up`` would render the spec as the rollout left it mid-way and reload or recreate the
    servers under it; the journal must be finished (``--resume``) or undone (``--abort``) first.
    """

    blocking = [j.summary() for j in unfinished(root, project)]
    blocking = [s for s in blocking if s["state"] in BLOCKING_ROLLOUT_STATES]
    if not blocking:
        return
    lines = []
    for info in blocking:
        line = (
            f"model {info['model']}: {info['action']} to version {info['version']} is "
            f"{info['state']} at step {info['step']}"
        )
        if info.get("error"):
            line += f" ({info['error']})"
        lines.append(line)
    models = [str(info["model"]) for info in blocking]
    commands = "; ".join(
        f"`invoke rollout --model {m} --resume` finishes it, "
        f"`invoke rollout --model {m} --abort` undoes it"
        for m in models
    )
    raise StackError(
        "refusing to run `up` while a rollout is unfinished:\n"
        + "\n".join(f"    {line}" for line in lines),
        service=SERVICE,
        hint=f"{commands}; then run `invoke up` (`invoke status` shows the rollout)",
    )


def observe_labels(
    rest: RestClient, expectations: Sequence[ModelExpectation]
) -> tuple[dict[str, set[int]], dict[str, dict[str, int | None]]]:
    """AVAILABLE versions per model and where each declared label points now (REST)."""
    available: dict[str, set[int]] = {}
    current: dict[str, dict[str, int | None]] = {}
    for expectation in expectations:
        observation = observe_model(rest, expectation)
        available[expectation.name] = {s.version for s in observation.versions if s.available}
        current[expectation.name] = dict(observation.labels)
    return available, current


class Lifecycle:
    """``up`` / ``down`` / ``status`` for one spec; collaborators injectable for tests."""

    def __init__(
        self,
        spec_path: Path,
        *,
        root: Path | None = None,
        source_root: Path | None = None,
        client: Any = None,
        say: Say = lambda text: None,
        progress: Say | None = None,
        engine: Callable[..., Any] | None = None,
    ) -> None:
        self.spec_path = spec_path
        self.root = (root or project_root_for(spec_path)).resolve()
        # The checkout holding runtime/ (to build the runtime image); by default the project root.
        self.source_root = (source_root or self.root).resolve()
        self._client = client
        self.say = say
        self.progress = progress
        self._engine = engine

    # -- collaborators ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            if self._engine is not None:
                self._client = self._engine()
            else:
                self._client = ensure_engine(say=self.say)
        return self._client

    def stack(self, spec: StackSpec) -> Stack:
        return Stack(ComposeProject.for_root(spec.project, self.root), self.client)

    # -- steps ------------------------------------------------------------------------------

    def ensure_models(self) -> None:
        """Write the demo models the demo spec names when they are missing (TensorFlow, offline).

        Only for the checkout's own ``config/stack.yaml``: any other spec brings its own models
        (a missing directory there is a validation error, never silently filled).
        """
        if self.spec_path.resolve() != (self.source_root / "config" / "stack.yaml").resolve():
            return

        spec = load_spec(self.spec_path, check_disk=False, project_root=self.root)
        names = {model.name for model in spec.models}
        repository = model_repository_dir(spec, self.spec_path)
        include_resnet = "resnet" in names
        missing = [
            step
            for step in plan_demo_models(repository, include_resnet=include_resnet)
            if step.action != "keep" and step.model.name in names
        ]
        if missing:
            self.say(f"writing the demo models into {repository} (first run only)")
            write_demo_models(repository, include_resnet=include_resnet, say=self.say)

    def render(self, loaded: Loaded) -> dict[str, str]:
        files = render_module.render_stack(loaded.spec, loaded.spec_path, self.root)
        render_module.check_rendered(files, self.root)
        if door_is_on(loaded.spec):
            # HAProxy must accept the door's config before anything is written or started.
            ensure_frontend_image(
                self.client, loaded.spec.frontend.image, source_root=self.source_root, say=self.say
            )
            check_haproxy_config(files, loaded.spec, loaded.spec_path, required=True)
        if prometheus_on(loaded.spec):
            # promtool must accept the Prometheus config before anything is written or started.
            ensure_prometheus_image(
                self.client,
                loaded.spec.monitoring.prometheus_image,
                source_root=self.source_root,
                say=self.say,
            )
            check_prometheus_config(files, loaded.spec, required=True)

        written = write_files_atomically(
            self.root, files, remove=render_module.stale_files(files, self.root)
        )
        if written:
            self.say("rendered " + ", ".join(written))
        return files

    def replicas(self, loaded: Loaded, stack: Stack) -> list[Replica]:
        """Each running serving container on its own published ports (Compose hands every
        replica one port of the published ranges); the spec's ports when none is known."""
        endpoints = endpoints_for(loaded.spec)
        if door_is_on(loaded.spec):
            # Behind the door replicas publish nothing: reach each one on the project network.
            return direct_replicas(
                self.client,
                stack.service_containers(SERVICE),
                rest_port=loaded.spec.serving.rest_port,
                grpc_port=loaded.spec.serving.grpc_port,
            )
        found = replicas(
            stack.service_containers(SERVICE),
            host=endpoints.host,
            rest_port=loaded.spec.serving.rest_port,
            grpc_port=loaded.spec.serving.grpc_port,
        )
        return found or [Replica(SERVICE, endpoints.rest_url, endpoints.grpc_target)]

    def _await_replicas(
        self, loaded: Loaded, stack: Stack, alive: Callable[[], str | None], timeout: float
    ) -> list[Replica]:
        """The replicas once all ``serving.replicas`` publish their ports (or one exited)."""
        wanted = loaded.spec.serving.replicas
        deadline = time.monotonic() + timeout
        while True:
            found = self.replicas(loaded, stack)
            if len(found) >= wanted or alive() is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.25)

    def wait_ready(
        self,
        loaded: Loaded,
        stack: Stack,
        *,
        timeout: float,
        expectations: Sequence[ModelExpectation] | None = None,
        only: Sequence[Replica] | None = None,
    ) -> Readiness:
        """Every replica (or ``only`` these) serves every expected version and label."""
        deadline = time.monotonic() + timeout

        def alive() -> str | None:
            containers = stack.service_containers(SERVICE)
            if not containers:
                return "is gone"
            for container in containers:
                if container.state in ("exited", "dead"):
                    return f"{container.name} exited with code {container.exit_code}"
                if container.state == "restarting" and container.last_exit is not None:
                    # The restart policy brings a crashing server back in a loop: the first
                    # exit already says the start failed (models, flags), as "exited" did.
                    return f"{container.name} exited with code {container.last_exit.code}"
            return None

        targets = (
            list(only) if only is not None else self._await_replicas(loaded, stack, alive, timeout)
        )
        readiness: Readiness | None = None
        for replica in targets:
            prefix = f"{replica.name}: " if len(targets) > 1 else ""

            def report(
                readiness: Readiness | None, error: BaseException | None, prefix: str = prefix
            ) -> None:
                if self.progress is None:
                    return
                if readiness is None:
                    self.progress(f"{prefix}waiting for the server to open its ports")
                else:
                    pending = "; ".join(f"{m}: {why}" for m, why in readiness.pending.items())
                    done = len(readiness.ready)
                    total = done + len(readiness.pending) + len({f[0] for f in readiness.failures})
                    self.progress(
                        f"{prefix}{done}/{total} models ready"
                        + (f" (waiting: {pending})" if pending else "")
                    )

            with RestClient(replica.rest_url, timeout=10) as rest:
                readiness = ModelsReady(
                    rest,
                    tuple(expectations if expectations is not None else loaded.expectations),
                    Poll(timeout=max(deadline - time.monotonic(), 0.0), interval=0.25),
                    service_alive=alive,
                    log_tail=lambda: stack.log_tail(SERVICE, 25),
                    on_progress=report,
                ).wait()
        assert readiness is not None  # targets is never empty
        return readiness

    def observe(self, loaded: Loaded, stack: Stack, files: Mapping[str, str]) -> Observed:
        containers = tuple(stack.containers())
        hashes = stack.config_hashes() if containers else {}
        image_id: str | None = None
        try:
            image_id = str(self.client.images.get(loaded.spec.serving.image).id)
        except (docker.errors.DockerException, OSError):  # not built yet, or the engine hiccups
            image_id = None
        ready: bool | None = None
        running = [c for c in containers if c.service == SERVICE and c.state == "running"]
        if running:
            try:
                ready = all(self._replica_ready(loaded, r) for r in self.replicas(loaded, stack))
            except (StackError, OSError):  # a replica not answering yet: readiness unknown
                ready = None
        return Observed(
            containers=containers,
            desired_hashes=hashes,
            desired_image_id=image_id,
            applied_models_config=read_applied(self.root),
            desired_models_config=files[render_module.MODELS_CONFIG],
            models_ready=ready,
            desired_replicas=loaded.spec.serving.replicas,
        )

    @staticmethod
    def _replica_ready(loaded: Loaded, replica: Replica) -> bool:
        with RestClient(replica.rest_url, timeout=5) as rest:
            observed = {e.name: observe_model(rest, e) for e in loaded.expectations}
        return assess(loaded.expectations, observed).ok

    def hot_reload(
        self, loaded: Loaded, stack: Stack, desired_text: str, *, timeout: float
    ) -> None:
        """Send the new config to each replica in turn (gRPC, its own port); labels to versions
        not AVAILABLE yet move in a second step once they are."""
        targets = self.replicas(loaded, stack)
        for index, replica in enumerate(targets, 1):
            self._reload_replica(
                loaded, stack, replica, desired_text, timeout=timeout, many=len(targets) > 1
            )
            if index < len(targets) and door_is_on(loaded.spec):
                # A replica loading a new version leaves the door's rotation (its /readyz says
                # 503 meanwhile): the next one is reloaded only once this one is back in.
                wait_replica_in_rotation(
                    lambda: self.door_status(loaded, stack), replica.name, timeout=timeout
                )

    def _reload_replica(
        self,
        loaded: Loaded,
        stack: Stack,
        replica: Replica,
        desired_text: str,
        *,
        timeout: float,
        many: bool,
    ) -> None:

        with RestClient(replica.rest_url, timeout=10) as rest:
            available, current = observe_labels(rest, loaded.expectations)
        steps = plan_reload(loaded.expectations, available, current)
        where = f" of {replica.name}" if many else ""
        with GrpcClient(replica.grpc_target, timeout=timeout) as grpc_client:
            for index, step in enumerate(steps, 1):
                config = step_config_text(desired_text, step)
                self.say(
                    f"hot reload{where} {index}/{len(steps)}: "
                    + (
                        "final labels"
                        if index == len(steps)
                        else "labels held back until their versions are AVAILABLE"
                    )
                )
                try:
                    grpc_client.reload_config(text_format.MessageToString(config), timeout=timeout)
                except ServingRequestError as exc:
                    if self._models_failed(loaded, replica):
                        # The config was taken but a model failed to load: report that (the
                        # final wait raises LoadFailed with each version's error).
                        self.say(f"reload answered: {exc.message}")
                        return
                    self._restore_models_config()
                    raise StackError(
                        f"{replica.name} rejected the new model config: {exc.message}",
                        service=SERVICE,
                        log_tail=stack.log_tail(SERVICE, 15),
                        hint="the previous models keep serving and config/models.config was "
                        "restored; fix the spec and run `invoke up` again",
                    ) from exc
                if index < len(steps):
                    partial = [
                        ModelExpectation(e.name, e.versions, dict(step.labels.get(e.name, {})))
                        for e in loaded.expectations
                    ]
                    self.wait_ready(
                        loaded, stack, timeout=timeout, expectations=partial, only=[replica]
                    )

    def _models_failed(self, loaded: Loaded, replica: Replica) -> bool:
        """Whether some declared version ended with a load error (the server took the config)."""
        with RestClient(replica.rest_url, timeout=5) as rest:
            try:
                observed = {e.name: observe_model(rest, e) for e in loaded.expectations}
            except (StackError, OSError):  # not answering: no load error seen (yet)
                return False
        return bool(assess(loaded.expectations, observed).failures)

    def _restore_models_config(self) -> None:
        previous = read_applied(self.root)
        if previous is None:
            return

        write_files_atomically(self.root, {render_module.MODELS_CONFIG: previous})

    def _degraded_start(
        self,
        loaded: Loaded,
        stack: Stack,
        *,
        desired_text: str,
        failures: Sequence[StartFailure],
        accepted: list[str],
        timeout: float,
    ) -> None:
        """The server exited at start because models failed to load: start it without them.

        config/models.config is rewritten (atomically) without the failed models, the failures
        are recorded for ``invoke status``, the container is started again and the other models
        are waited for and smoke-tested. Always raises :class:`LoadFailed` naming the failures;
        the spec is not changed, so the next ``up`` reloads the full config (hot, no restart).
        """

        failed = {f.model for f in failures}
        lines = [f"model {f.model} version {f.version}: {f.error}" for f in failures]
        listing = "\n".join(f"    {line}" for line in lines)
        record_start_failures(self.root, failures)
        hint = (
            "fix or remove the broken version directory, then run `invoke up` again: it loads "
            "the fixed model by hot reload (no restart); `invoke status` shows each model's state"
        )
        remaining = [e for e in loaded.expectations if e.name not in failed]
        as_tuples = [(f.model, f.version, f.error) for f in failures]
        if not remaining:
            raise LoadFailed(
                "the server failed to start: no model loaded (state END):\n" + listing,
                failures=as_tuples,
                hint=hint,
            )
        names = ", ".join(sorted(failed))
        degraded = config_without(
            desired_text,
            failed,
            f"degraded start: without {names} (failed to load; {START_FAILURES})",
        )
        write_files_atomically(self.root, {render_module.MODELS_CONFIG: degraded})
        accepted[0] = degraded
        self.say(
            f"the server could not load {names} at start; starting it without "
            + ("them" if len(failed) > 1 else "it")
        )
        # A fresh container: the failed one is in its restart policy's loop, and its last exit
        # would read as this start failing too.
        stack.up(force_recreate=True)
        reduced = Loaded(
            loaded.spec.model_copy(
                update={"models": [m for m in loaded.spec.models if m.name not in failed]}
            ),
            loaded.spec_path,
            loaded.root,
            tuple(remaining),
        )
        self.wait_ready(reduced, stack, timeout=timeout)
        results: list[SmokeResult] = []
        for replica in self.replicas(reduced, stack):
            with RestClient(replica.rest_url) as rest:
                results += smoke(reduced, rest, replica=replica.name)
        if door_is_on(loaded.spec):
            # Every replica in the door's rotation, serving the other models through it.
            results += self._smoke_through_door(reduced, stack, timeout=timeout)
        raise_for_smoke(results)
        serving = ", ".join(e.name for e in remaining)
        raise LoadFailed(
            "model versions failed to load at start (state END):\n"
            + listing
            + f"\n  still serving: {serving} (the server runs without {names}; "
            "config/models.config leaves it out, the spec is unchanged)",
            failures=as_tuples,
            hint=hint,
        )

    def up(self, *, timeout: float = DEFAULT_TIMEOUT_S, dry_run: bool = False) -> UpReport:
        timings: dict[str, float] = {}
        started = time.monotonic()

        def lap(name: str) -> None:
            timings[name] = round(time.monotonic() - started - sum(timings.values()), 3)

        project = load_spec(self.spec_path, check_disk=False, project_root=self.root).project
        try:
            refuse_during_rollout(self.root, project)
        except StackError as exc:
            if not dry_run:
                raise
            self.say(f"warning: {exc}")
        # The engine and Compose before anything that needs them (rendering checks the compose
        # file with Compose): on a machine with a plugin-less Docker CLI this installs the plugin.
        client = self.client
        lap("engine")
        self.ensure_models()
        loaded = load(self.spec_path, self.root)
        lap("validate")
        if dry_run:
            files = render_module.render_stack(loaded.spec, loaded.spec_path, self.root)
        else:
            files = self.render(loaded)
        lap("render")
        stack = self.stack(loaded.spec)
        if not dry_run:
            ensure_image(
                client, loaded.spec.serving.image, source_root=self.source_root, say=self.say
            )
        lap("image")
        observed = self.observe(loaded, stack, files)
        plan = plan_up(observed)
        self.say(f"plan: {plan.describe()}")
        lap("plan")
        if dry_run:
            return UpReport(plan, self.status(loaded, stack), timings=timings, dry_run=True)
        desired_text = files[render_module.MODELS_CONFIG]
        if plan.action in (UpAction.START, UpAction.RECREATE):
            check_image_isa(client, loaded.spec.serving.image, service=SERVICE)
            endpoints = endpoints_for(loaded.spec)
            raise_for_conflicts(
                port_conflicts(
                    client,
                    loaded.spec.serving.bind_address,
                    _host_ports(loaded.spec),
                    own_project=loaded.spec.project,
                )
            )
            forget_applied(self.root)
            forget_start_failures(self.root)
            # A container in a crash loop (restart policy) is replaced, not waited on.
            looping = any(c.state == "restarting" for c in observed.containers)
            stack.up(force_recreate=looping)
            self.say(f"containers up; waiting for models on {endpoints.rest_url}")
            lap("compose up")
        elif plan.action is UpAction.RELOAD:
            self.hot_reload(loaded, stack, desired_text, timeout=min(timeout, RELOAD_TIMEOUT_S))
            lap("reload")
        accepted = [desired_text]  # what the running server holds (degraded start: less)
        try:
            try:
                self.wait_ready(loaded, stack, timeout=timeout)
            except StackError as exc:
                if plan.action not in (UpAction.START, UpAction.RECREATE) or isinstance(
                    exc, LoadFailed
                ):
                    raise
                failures = parse_start_failures(stack.log_tail(SERVICE, 400))
                if not failures:
                    raise
                self._degraded_start(
                    loaded,
                    stack,
                    desired_text=desired_text,
                    failures=failures,
                    accepted=accepted,
                    timeout=timeout,
                )
        finally:
            if plan.action is not UpAction.NOOP and _server_accepted(stack):
                record_applied(self.root, accepted[0])
        lap("wait")
        results: list[SmokeResult] = []
        targets = self.replicas(loaded, stack)
        for replica in targets:
            with RestClient(replica.rest_url) as rest:
                results += smoke(loaded, rest, replica=replica.name if len(targets) > 1 else "")
        if door_is_on(loaded.spec):
            results += self._smoke_through_door(loaded, stack, timeout=timeout)
        lap("smoke")
        raise_for_smoke(results)
        forget_start_failures(self.root)
        report = UpReport(plan, self.status(loaded, stack), results, timings)
        report.sample = _sample_line(loaded, results)
        return report

    def door_status(self, loaded: Loaded, stack: Stack) -> DoorStatus | None:
        """The door's view of the replicas (None when the spec has no door or it is absent)."""
        if not door_is_on(loaded.spec):
            return None
        return door_view(
            self.client, stack.containers(), stats_port=loaded.spec.frontend.stats_port
        )

    def _smoke_through_door(
        self, loaded: Loaded, stack: Stack, *, timeout: float
    ) -> list[SmokeResult]:
        """Every replica in the door's rotation, then the samples through the door itself."""
        door = frontend_container(stack.containers())
        if door is None:
            raise StackError("the front door container is missing", service="frontend")
        wanted = len(self.replicas(loaded, stack))
        wait_in_rotation(
            lambda: self.door_status(loaded, stack) or DoorStatus(door.name, "missing"),
            wanted,
            timeout=timeout,
        )
        try:
            # Over TLS (the spec's certificate as trust) and with the keys file's first plain key.
            access = door_access(loaded.spec, loaded.spec_path)
        except UsageError as exc:
            self.say(f"samples were sent to each replica directly, not through the door: {exc}")
            return []
        try:
            with access.rest() as rest:
                return smoke(loaded, rest, replica="door")
        except requests.exceptions.SSLError as exc:
            self.say(
                f"warning: TLS with {access.rest_url} failed ({type(exc).__name__}): the "
                f"certificate does not name {access.endpoints.host}; samples were sent to each "
                "replica directly"
            )
            return []

    def status(self, loaded: Loaded | None = None, stack: Stack | None = None) -> StackStatus:
        if loaded is None:
            spec = load_spec(self.spec_path, check_disk=False, project_root=self.root)
            try:
                loaded = load(self.spec_path, self.root)
            except TfstackError:
                loaded = Loaded(
                    spec,
                    self.spec_path,
                    self.root,
                    tuple(ModelExpectation(m.name, (), dict(m.labels)) for m in spec.models),
                )
        stack = stack or self.stack(loaded.spec)
        endpoints = endpoints_for(loaded.spec)
        direct = self.replicas(loaded, stack) if door_is_on(loaded.spec) else []
        with self._status_client(loaded, direct) as rest:
            status = observe(
                project=loaded.spec.project,
                spec_path=str(self.spec_path),
                rest=rest,
                expectations=loaded.expectations,
                containers=stack.with_last_deaths(stack.service_containers(SERVICE)),
                host=endpoints.host,
                rest_port=endpoints.rest_port,
                grpc_port=endpoints.grpc_port,
                rest_for=lambda url: RestClient(url, timeout=5),
                replica_urls={r.name: r.rest_url for r in direct}
                if door_is_on(loaded.spec)
                else None,
            )
        status = replace(status, frontend=self.door_status(loaded, stack))
        return with_start_failures(status, read_start_failures(self.root))

    @staticmethod
    def _status_client(loaded: Loaded, direct: Sequence[Replica]) -> RestClient:
        """Where status asks for the models: the stack's REST endpoint, through a door over TLS
        and with its API key when it has them; a door whose keys file holds only hashes is
        passed by (the first replica directly): status needs no key from the command line."""
        try:
            access = door_access(loaded.spec, loaded.spec_path)
        except UsageError:
            if direct:
                return RestClient(direct[0].rest_url, timeout=5)
            return RestClient(endpoints_for(loaded.spec).rest_url, timeout=5)
        return access.rest(timeout=5)

    def logs(self, *, follow: bool = False, tail: int | None = None) -> str:
        """The server log (printed by Compose itself when following)."""

        spec = load_spec(self.spec_path, check_disk=False, project_root=self.root)
        return self.stack(spec).logs(follow=follow, tail=tail).stdout

    def down(self, *, volumes: bool = False) -> list[str]:
        spec = load_spec(self.spec_path, check_disk=False, project_root=self.root)
        removed = self.stack(spec).down(volumes=volumes)
        forget_applied(self.root)
        forget_start_failures(self.root)
        return removed


def _host_ports(spec: StackSpec) -> list[int]:
    # The door publishes one port of each kind; without it N replicas publish N-port ranges.
    count = 1 if door_is_on(spec) else spec.serving.replicas
    return [
        port
        for start in (spec.serving.grpc_port, spec.serving.rest_port)
        for port in range(start, start + count)
    ]


def _server_accepted(stack: Stack) -> bool:
    """The server runs (so it holds the config on disk or the one just reloaded)."""
    try:
        return any(c.state == "running" for c in stack.service_containers(SERVICE))
    except (docker.errors.DockerException, OSError):  # the engine cannot tell: not accepted
        return False


def _sample_line(loaded: Loaded, results: Sequence[SmokeResult]) -> tuple[str, Any, Any] | None:
    for model in loaded.spec.models:
        for sample in model.samples:
            for result in results:
                if result.model == model.name and result.sample == sample.name and result.ok:
                    if result.target != "default":
                        continue
                    body = sample_body(sample, loaded.spec_path)
                    if len(json.dumps(body)) > 300:
                        continue
                    endpoints = endpoints_for(loaded.spec)
                    line = f"POST {endpoints.rest_url}/v1/models/{model.name}:{sample.method}"
                    return line, body, result.answer
    return None
