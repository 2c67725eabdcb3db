"""``invoke rollout`` / ``rollback``: new model versions into service with zero failed requests.

Plan, then apply. :func:`plan` (pure) turns a request and what is observed (the model's policy and
labels in the spec, the versions the serving instance has AVAILABLE, the version directories on
disk) into :class:`~tfstack.rollout.journal.Step` data; :func:`~tfstack.rollout.apply.apply` runs
them through a :class:`~tfstack.rollout.apply.Runner`, recording each step in the journal
(:mod:`tfstack.rollout.journal`) so an interrupted rollout can be resumed or aborted, and putting
everything back when a step fails.
The trap (docs/rollout.md): TF Serving answers a request naming no version or label with the
highest AVAILABLE version. tfstack therefore verifies a candidate in a temporary *side instance*
(:mod:`tfstack.rollout.verify`) before the serving instance may load it:

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tfstack.errors import RolloutError, UsageError
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
)

DEFAULT_DRAIN_S = 2.0
DEFAULT_LATENCY_FACTOR = 2.0
RELOAD_TIMEOUT_S = 120.0


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
    traffic: tuple[int, ...] = ()  # weighted canary steps, percent (``--traffic 10,50,100``)
    analysis_s: float = 0.0  # one analysis window; 0: the model's slo.window_seconds


def parse_traffic(text: str) -> tuple[int, ...]:
    """``--traffic 10,50,100``: strictly increasing percentages in 1..100 (UsageError if not)."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise UsageError("--traffic needs at least one percentage, e.g. --traffic 10,50,100")
    steps: list[int] = []
    for word in words:
        try:
            value = int(word)
        except ValueError:
            raise UsageError(
                f"--traffic {text!r}: {word!r} is not a whole percentage",
                hint="give increasing percentages in 1..100, e.g. --traffic 10,50,100",
            ) from None
        if not 1 <= value <= 100:
            raise UsageError(
                f"--traffic {text!r}: {value} is outside 1..100",
                hint="give increasing percentages in 1..100, e.g. --traffic 10,50,100",
            )
        if steps and value <= steps[-1]:
            raise UsageError(
                f"--traffic {text!r}: {value} does not increase on {steps[-1]}",
                hint="each step must send more traffic than the one before, e.g. 10,50,100",
            )
        steps.append(value)
    return tuple(steps)


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
    if request.traffic:
        steps.extend(_canary_steps(request, version, stable))
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
    if request.traffic:
        steps.append(
            Step(
                name="canary_stop",
                kind="canary_stop",
                description=f"the door's share back to 0 (unversioned requests now reach version "
                f"{version} on every replica), then the canary replica drained and removed",
                version=version,
            )
        )
    steps.extend(_retire(request, loaded, promoted, version, stable))
    return steps


def _canary_steps(request: RolloutRequest, version: int, stable: int) -> list[Step]:
    """The weighted canary: a canary replica, then one gated traffic step per percentage."""
    if request.canary:
        raise UsageError(
            "--traffic and --canary are two kinds of canary: pick one",
            hint="--traffic splits unversioned requests at the door and promotes by itself; "
            "--canary only moves the `canary` label",
        )
    window = f"{request.analysis_s:g}s windows" if request.analysis_s else "slo.window_seconds"
    steps = [
        Step(
            name="canary_start",
            kind="canary_start",
            description=f"start a canary replica serving version {version} only and wait until "
            "it is AVAILABLE and in the door's rotation (no traffic yet)",
            version=version,
        )
    ]
    for percent in request.traffic:
        steps.append(
            Step(
                name=f"traffic_{percent}",
                kind="traffic",
                description=f"send {percent}% of unversioned {request.model} requests to version "
                f"{version}; compare it with version {stable} over {window}; go on only if "
                "every models[].slo gate holds",
                version=version,
                compare_with=stable,
                percent=percent,
                analysis_s=request.analysis_s,
            )
        )
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


def _done(journal: Journal, name: str) -> bool:
    record = journal.record(name)
    return record is not None and record.status == "done"


def plan_abort(journal: Journal) -> list[Step]:
    """The steps that put back the state from before ``journal`` (failure or ``--abort``)."""
    steps: list[Step] = []
    transitions = [r for r in journal.steps if r.step.kind == "transition"]
    changed = any(r.status in ("running", "done", "failed") for r in transitions)
    beyond_pin = any(
        r.status in ("running", "done", "failed") and r.step.name != "pin" for r in transitions
    )
    if journal.started("canary_start") and not _done(journal, "canary_stop"):
        steps.append(
            Step(
                name="canary_stop",
                kind="canary_stop",
                description="the door's share back to 0 at once, then the canary replica "
                "drained and removed",
                version=journal.version,
            )
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
