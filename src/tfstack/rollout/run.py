"""``invoke rollout`` / ``rollback``: new model versions into service with zero failed requests.

Plan, then apply. :func:`plan` (pure) turns a request and what is observed (the model's policy and
labels in the spec, the versions the serving instance has AVAILABLE, the version directories on
disk) into :class:`~tfstack.journal.Step` data; :func:`apply` runs them through a :class:`Runner`,
recording each step in the journal (:mod:`tfstack.journal`) so an interrupted rollout can be
resumed or aborted, and putting everything back when a step fails.

The trap (docs/rollout.md): TF Serving answers a request naming no version or label with the
highest AVAILABLE version. tfstack therefore verifies a candidate in a temporary *side instance*
(:mod:`tfstack.verify`) before the serving instance may load it:

0. ``pin``: a latest/all policy becomes ``specific`` [the versions served now], so renaming the
   candidate into the model directory cannot make the file-system poll load it;
1. ``stage``: copy/export under a dot-name, check the SavedModel and its signatures, rename to N;
2. ``verify``: side instance serving [stable, N]: N loads, answers the samples, is fast enough;
3. ``load``: the serving replicas, in turn, serve [stable, N] (labels unchanged), N AVAILABLE;
4. ``promote``: ``stable`` (or ``canary``) -> N, recorded in the spec and models.config;
5. ``retire``: after a drain, versions no label needs are unloaded (the previous stable version is
   kept by default so that a rollback is one reload).

Every transition edits the spec (comments kept), renders models.config, reloads each replica with
gRPC ``HandleReloadConfigRequest`` and waits for the versions and labels: the spec, the rendered
file and the server agree after every step.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tfstack.errors import RolloutError, SpecError, TfstackError, UsageError
from tfstack.journal import (
    Journal,
    ModelState,
    Step,
    StepRecord,
    now_iso,
    read_journal,
    write_journal,
)
from tfstack.stack import Replica

Say = Callable[[str], None]
DEFAULT_DRAIN_S = 2.0
DEFAULT_LATENCY_FACTOR = 2.0
RELOAD_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class RolloutRequest:
    """What the user asked for (``invoke rollout`` options)."""

    model: str
    version: int | None = None
    source: str | None = None
    canary: bool = False
    promote: bool = False
    allow_signature_change: bool = False
    keep_previous: bool = True
    drain_s: float = DEFAULT_DRAIN_S
    latency_factor: float = DEFAULT_LATENCY_FACTOR


@dataclass(frozen=True)
class Observed:
    """The model as the spec declares it and as the serving instance serves it."""

    model: str
    spec_state: ModelState
    served: tuple[int, ...]  # AVAILABLE in every serving replica, ascending
    on_disk: tuple[int, ...]  # numbered version directories, ascending

    @property
    def stable(self) -> int | None:
        """The version clients get now: the ``stable`` label, else the highest served."""
        label = self.spec_state.labels.get("stable")
        if label is not None:
            return label
        return max(self.served) if self.served else None


def _fail(model: str, message: str, *, version: int | None = None, hint: str | None = None) -> Any:
    return RolloutError(message, model=model, version=version, step="plan", hint=hint)


# --------------------------------------------------------------------------------------------
# Planning (pure)


def _transition(
    name: str,
    description: str,
    target: ModelState,
    wait: Sequence[int],
    *,
    drain_s: float = 0.0,
    restore_original: bool = False,
) -> Step:
    return Step(
        name=name,
        kind="transition",
        description=description,
        target=target,
        wait_available=tuple(sorted(set(wait))),
        drain_s=drain_s,
        restore_original=restore_original,
    )


def _label_versions(labels: Mapping[str, int]) -> set[int]:
    return set(labels.values())


def plan_rollout(request: RolloutRequest, observed: Observed) -> list[Step]:
    """Steps 0-5 of a rollout of ``request.version`` (see the module docstring)."""
    model, version = request.model, request.version
    if version is None:
        raise UsageError("--version is required for a rollout (the new version number)")
    served = observed.served
    if not served:
        raise _fail(
            model,
            "the serving instance has no AVAILABLE version of this model",
            hint="start the stack with `invoke up` (and check `invoke status`) first",
        )
    if version in served:
        raise _fail(model, f"version {version} is already served", version=version)
    if version <= max(served):
        raise _fail(
            model,
            f"version {version} is not higher than the served versions {list(served)}",
            version=version,
            hint="clients that name no version get the highest one: give the new version the "
            "highest number",
        )
    labels = dict(observed.spec_state.labels)
    stable = observed.stable
    assert stable is not None
    if stable not in served:
        raise _fail(
            model,
            f"label stable points at version {stable}, which the server does not serve "
            f"(served: {list(served)})",
            hint="run `invoke up` so the server matches the spec, then roll out",
        )
    canary = labels.get("canary")
    if canary is not None and canary != stable:
        raise _fail(
            model,
            f"a canary (version {canary}) is in progress",
            hint=f"promote it (`invoke rollout --model {model} --promote`) or roll it back "
            f"(`invoke rollback --model {model}`) first",
        )
    if request.source is None and version not in observed.on_disk:
        raise _fail(
            model,
            f"no --source given and version directory {version} does not exist",
            version=version,
            hint="pass --source DIR (a SavedModel, kept outside the model directory) or "
            "--source FILE.keras",
        )
    if request.source is not None and version in observed.on_disk:
        raise _fail(
            model,
            f"version directory {version} already exists",
            version=version,
            hint="pick a new version number, or omit --source to roll out that directory",
        )
    steps: list[Step] = []
    pinned = ModelState.pinned(served, labels)
    if observed.spec_state != pinned:
        steps.append(
            _transition(
                "pin",
                f"pin the policy to the versions served now {list(served)} so that version "
                f"{version} cannot be loaded by the file-system poll before it is verified",
                pinned,
                served,
            )
        )
    source = request.source or f"(version directory {version} already in place)"
    steps.append(
        Step(
            name="stage",
            kind="stage",
            description=f"stage {source} as version {version}: SavedModel and signature checks "
            f"against version {stable}, then an atomic rename",
            version=version,
            compare_with=stable,
            source=request.source,
            allow_signature_change=request.allow_signature_change,
        )
    )
    steps.append(
        Step(
            name="verify",
            kind="verify",
            description=f"verify version {version} in a side instance beside version {stable}: "
            f"it loads, answers the samples, latency <= {request.latency_factor:g}x",
            version=version,
            compare_with=stable,
            latency_factor=request.latency_factor,
        )
    )
    loaded = (*served, version)
    steps.append(
        _transition(
            "load",
            f"serve versions {sorted(loaded)} on every replica in turn (labels unchanged); "
            f"wait until version {version} is AVAILABLE",
            ModelState.pinned(loaded, labels),
            loaded,
        )
    )
    if request.canary:
        steps.append(
            _transition(
                "promote",
                f"label canary -> {version} (stable stays on {stable}); promote later with "
                "--promote",
                ModelState.pinned(loaded, {**labels, "canary": version}),
                (version, stable),
            )
        )
        return steps
    promoted = {**labels, "stable": version}
    promoted.pop("canary", None)
    steps.append(
        _transition(
            "promote",
            f"label stable -> {version} (was {stable})",
            ModelState.pinned(loaded, promoted),
            (version,),
        )
    )
    steps.extend(_retire(request, loaded, promoted, version, stable))
    return steps


def _retire(
    request: RolloutRequest,
    loaded: Sequence[int],
    labels: Mapping[str, int],
    version: int,
    previous: int | None,
) -> list[Step]:
    keep = {version} | _label_versions(labels)
    if request.keep_previous and previous is not None:
        keep.add(previous)
    if keep == set(loaded):
        return []
    dropped = sorted(set(loaded) - keep)
    kept_note = (
        f" (version {previous} stays loaded for an instant rollback)"
        if request.keep_previous and previous is not None and previous != version
        else ""
    )
    return [
        _transition(
            "retire",
            f"after a {request.drain_s:g}s drain, unload versions {dropped}{kept_note}",
            ModelState.pinned(sorted(keep), labels),
            (version,),
            drain_s=request.drain_s,
        )
    ]


def plan_promote(request: RolloutRequest, observed: Observed) -> list[Step]:
    """``--promote``: the canary version becomes stable; older versions retire."""
    model = request.model
    labels = dict(observed.spec_state.labels)
    canary = labels.get("canary")
    if canary is None:
        raise _fail(
            model,
            "there is no canary to promote (the spec has no `canary` label)",
            hint=f"start one with `invoke rollout --model {model} --version N --canary`",
        )
    if request.version is not None and request.version != canary:
        raise _fail(
            model,
            f"the canary is version {canary}, not {request.version}",
            version=request.version,
        )
    if canary not in observed.served:
        raise _fail(
            model,
            f"the canary version {canary} is not AVAILABLE on the serving instance",
            version=canary,
            hint="run `invoke status`; `invoke rollback` drops the canary",
        )
    previous = labels.get("stable")
    promoted = {**labels, "stable": canary}
    promoted.pop("canary")
    steps = [
        _transition(
            "promote",
            f"label stable -> {canary} (was {previous}); drop the canary label",
            ModelState.pinned(observed.served, promoted),
            (canary,),
        )
    ]
    steps.extend(_retire(request, observed.served, promoted, canary, previous))
    return steps


def plan(request: RolloutRequest, observed: Observed) -> list[Step]:
    """The steps of a rollout (or, with ``promote``, of promoting the canary)."""
    if request.promote:
        return plan_promote(request, observed)
    return plan_rollout(request, observed)


def previous_from_history(history: Sequence[Mapping[str, Any]], current: int) -> int | None:
    """The version that was stable before ``current`` became stable (latest record wins)."""
    for entry in reversed(history):
        if entry.get("version") == current and entry.get("previous") is not None:
            return int(entry["previous"])
    return None


def plan_rollback(model: str, observed: Observed, previous: int | None) -> list[Step]:
    """Labels back on the previous version (reloaded first if retired), the bad one unloaded.

    A canary in progress is rolled back by dropping the canary label and unloading its version.
    """
    labels = dict(observed.spec_state.labels)
    served = set(observed.served)
    canary = labels.get("canary")
    stable = labels.get("stable")
    if canary is not None and canary != stable:
        kept = {k: v for k, v in labels.items() if k != "canary"}
        final = (served - {canary}) | _label_versions(kept)
        return [
            _transition(
                "rollback",
                f"drop the canary label and unload version {canary}; stable stays on {stable}",
                ModelState.pinned(sorted(final), kept),
                sorted(_label_versions(kept)),
            )
        ]
    if stable is None:
        raise _fail(model, "the spec has no `stable` label: nothing to roll back")
    if previous is None:
        older = [v for v in observed.on_disk if v < stable]
        if not older:
            raise _fail(
                model,
                f"no version older than {stable} is on disk to roll back to",
                version=stable,
            )
        previous = older[-1]
    if previous not in observed.on_disk:
        raise _fail(
            model,
            f"version {previous} (stable before {stable}) is no longer on disk",
            version=previous,
        )
    steps: list[Step] = []
    if previous not in served:
        steps.append(
            _transition(
                "reload_previous",
                f"load version {previous} again beside {stable} (labels unchanged)",
                ModelState.pinned(sorted(served | {previous}), labels),
                (previous,),
            )
        )
    moved = {k: (previous if v == stable else v) for k, v in labels.items()}
    moved.pop("canary", None)
    final = ((served | {previous}) - {stable}) | _label_versions(moved)
    steps.append(
        _transition(
            "rollback",
            f"label stable -> {previous} and unload version {stable} in one reload (clients "
            f"that name no version return to {previous} too)",
            ModelState.pinned(sorted(final), moved),
            (previous,),
        )
    )
    return steps


def plan_abort(journal: Journal) -> list[Step]:
    """The steps that put back the state from before ``journal`` (failure or ``--abort``)."""
    steps: list[Step] = []
    transitions = [r for r in journal.steps if r.step.kind == "transition"]
    changed = any(r.status in ("running", "done", "failed") for r in transitions)
    beyond_pin = any(
        r.status in ("running", "done", "failed") and r.step.name != "pin" for r in transitions
    )
    if journal.action == "rollout" and journal.version is not None:
        if beyond_pin:
            steps.append(
                _transition(
                    "unload",
                    f"serve versions {list(journal.original_served)} again with the previous "
                    f"labels (version {journal.version} unloads)",
                    ModelState.pinned(journal.original_served, journal.original.labels),
                    journal.original_served,
                )
            )
        if journal.created_version_dir or journal.started("stage"):
            steps.append(
                Step(
                    name="remove_version",
                    kind="remove_version",
                    description=f"remove version directory {journal.version} (created by this "
                    "rollout) and staging leftovers",
                    version=journal.version,
                )
            )
    if changed:
        steps.append(
            _transition(
                "restore",
                "restore the spec as it was and reload the previous config "
                f"({journal.original.describe()})",
                journal.original,
                journal.original_served,
                restore_original=True,
            )
        )
    return steps


# --------------------------------------------------------------------------------------------
# Applying


class Runner(Protocol):
    """The effects of each step kind; :class:`StackRunner` is the real one."""

    def transition(self, step: Step, journal: Journal) -> str: ...

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str: ...

    def verify(self, step: Step, journal: Journal) -> str: ...

    def remove_version(self, step: Step, journal: Journal) -> str: ...

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


# --------------------------------------------------------------------------------------------
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
            from tfstack.engine import ensure_engine

            self.client = ensure_engine(say=self.say)
        return self.client

    def load_spec(self, *, check_disk: bool = True) -> Any:
        from tfstack.validate import load_spec

        return load_spec(self.spec_path, check_disk=check_disk, project_root=self.root)

    def model_spec(self, spec: Any) -> Any:
        for model in spec.models:
            if model.name == self.model:
                return model
        known = ", ".join(m.name for m in spec.models)
        raise UsageError(f"the spec has no model {self.model!r} (models: {known})")

    def model_dir(self, spec: Any) -> Path:
        from tfstack.spec import model_host_dir

        return Path(model_host_dir(spec, self.spec_path, self.model_spec(spec)))


def state_of(model: Any) -> ModelState:
    """A spec ModelSpec's policy and labels as a ModelState."""
    return ModelState(model.policy.model_dump(), dict(model.labels))


def versions_on_disk(model_dir: Path) -> tuple[int, ...]:
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return ()
    return tuple(
        sorted(int(e.name) for e in entries if e.name.isascii() and e.name.isdigit() and e.is_dir())
    )


def replicas_of(spec: Any, containers: Sequence[Any]) -> list[Replica]:
    """Each running serving container's published REST and gRPC ports (its own, per replica);
    the spec's ports when no container is known (a server started some other way)."""
    from tfstack.lifecycle import endpoints_for
    from tfstack.stack import replicas

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
        from tfstack.stack import ComposeProject, Stack

        try:
            stack = Stack(
                ComposeProject.for_root(spec.project, self.context.root), self.context.docker()
            )
            containers = stack.service_containers("serving")
        except TfstackError:
            containers = []
        return replicas_of(spec, containers)

    # -- transition -------------------------------------------------------------------------

    def _write_spec(self, text: str) -> None:
        from tfstack.files import write_files_atomically

        path = self.context.spec_path.resolve()
        write_files_atomically(path.parent, {path.name: text})

    def transition(self, step: Step, journal: Journal) -> str:
        from tfstack import render
        from tfstack.files import write_files_atomically
        from tfstack.lifecycle import record_applied
        from tfstack.specedit import set_model_state

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
        files = render.render_stack(spec, context.spec_path, context.root)
        config_text = files[render.MODELS_CONFIG]
        write_files_atomically(context.root, {render.MODELS_CONFIG: config_text})
        replicas = self.replicas(spec)
        labels = dict(step.target.labels)
        started = time.monotonic()
        for replica in replicas:
            self._reload(replica, config_text, step, labels)
        record_applied(context.root, config_text)
        where = f"{len(replicas)} replica{'s' if len(replicas) != 1 else ''}"
        return f"{step.target.describe()} on {where} in {time.monotonic() - started:.2f}s"

    def _reload(
        self, replica: Replica, config_text: str, step: Step, labels: Mapping[str, int]
    ) -> None:
        from tfstack.client import GrpcClient, RestClient, ServingRequestError
        from tfstack.waiting import ModelExpectation, ModelsReady, Poll

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
        rest = RestClient(replica.rest_url, timeout=10)
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
        finally:
            rest.close()
        self.say(f"      {replica.name}: {step.target.describe() if step.target else ''} ready")

    # -- stage, verify, remove ------------------------------------------------------------------

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str:
        from tfstack.staging import stage_version

        assert step.version is not None
        spec = self.context.load_spec(check_disk=False)
        model_dir = self.context.model_dir(spec)
        final = model_dir / str(step.version)
        source: Path | None = Path(step.source) if step.source else None
        if journal.created_version_dir and final.is_dir():
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
        from tfstack.lifecycle import sample_body
        from tfstack.verify import plan_side_instance, verify_candidate

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
        from tfstack.staging import clean_leftovers, remove_version_dir

        assert step.version is not None
        spec = self.context.load_spec(check_disk=False)
        model_dir = self.context.model_dir(spec)
        removed = []
        if journal.created_version_dir and remove_version_dir(model_dir, step.version):
            removed.append(str(step.version))
        removed += clean_leftovers(model_dir)
        with contextlib.suppress(Exception):
            from tfstack.verify import remove_verifiers

            removed += remove_verifiers(self.context.docker(), spec.project, self.context.model)
        return "removed " + (", ".join(removed) if removed else "nothing (none left)")


# --------------------------------------------------------------------------------------------
# Observing and the entry points


def observe(context: Context, spec: Any) -> Observed:
    """The model's state in the spec, the versions AVAILABLE on every replica, the disk."""
    from tfstack.client import ModelRef, RestClient, ServingRequestError

    model = context.model_spec(spec)
    runner = StackRunner(context)
    served: set[int] | None = None
    for replica in runner.replicas(spec):
        rest = RestClient(replica.rest_url, timeout=10)
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
        finally:
            rest.close()
        available = {s.version for s in states if s.available}
        served = available if served is None else served & available
    return Observed(
        model.name,
        state_of(model),
        tuple(sorted(served or ())),
        versions_on_disk(context.model_dir(spec)),
    )


@dataclass
class Outcome:
    """What a rollout/rollback did: the journal, step timings and a one-line summary."""

    journal: Journal
    timings: dict[str, float]
    summary: str
    dry_run: bool = False


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


def run_rollout(
    context: Context,
    request: RolloutRequest,
    *,
    dry_run: bool = False,
    resume: bool = False,
    abort: bool = False,
    runner: Runner | None = None,
    on_step: Callable[[str, str, float], None] | None = None,
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
    observed = observe(context, spec)
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
) -> Outcome:
    """``invoke rollback``: labels back on the previous version, the bad one unloaded."""
    spec = context.load_spec(check_disk=False)
    context.model_spec(spec)
    save = _save_for(context.root)
    runner = runner or StackRunner(context)
    old = read_journal(context.root, spec.project, context.model)
    _check_no_active(old if old is None or old.status != "canary" else None, context.model)
    observed = observe(context, spec)
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
