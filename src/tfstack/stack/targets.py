"""The deployment target a command runs on: one interface for Compose, a Swarm and Kubernetes.

``render``, ``plan``, ``up``, ``down``, ``status``, ``predict``, ``rollout`` and ``rollback`` take
``--target`` (else the spec's ``deploy.target``). :func:`target_for` picks the implementation once;
the task then calls the same method whatever the target, and each implementation delegates to the
target's own modules (:mod:`tfstack.stack.lifecycle` and :mod:`tfstack.rollout` for Compose,
:mod:`tfstack.stack.swarm` and :mod:`tfstack.stack.swarm_rollout` for a Swarm,
:mod:`tfstack.kubernetes` for Kubernetes). A combination a target does not have is a
:class:`~tfstack.errors.UsageError` (exit 2) naming the target and what to run instead, raised
before anything is touched.

Reports keep their target's shape (a Compose status table, a Swarm's tasks per node); what the
tasks need of them is small: :class:`Described` lines to print, a :class:`Documented` JSON document
for ``--json``, a :class:`Checked` ``ok`` for the exit code.

Kubernetes is rendered and validated here, never deployed. An explicit ``--target kubernetes`` on a
command that needs a running stack is refused. A spec whose ``deploy.target`` is ``kubernetes``
still has its local Compose stack, which CI's rehearsal job starts with a plain ``./tfstack up``:
without ``--target``, those commands run on Compose, as they always did.

Each target's functions are looked up on their modules at call time
(``tfstack.stack.swarm.swarm_up``, not an imported name), so tests replace them there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rich.console import RenderableType

import tfstack.kubernetes
import tfstack.render
import tfstack.rollout
import tfstack.stack.lifecycle
import tfstack.stack.predict
import tfstack.stack.swarm
import tfstack.stack.swarm_rollout
from tfstack.core.files import FileChange
from tfstack.core.progress import Say
from tfstack.errors import UsageError
from tfstack.kubernetes import KUBERNETES_DIR
from tfstack.rollout import Context, Outcome, RolloutRequest
from tfstack.serving.client import ModelRef
from tfstack.spec.load import deploy_target

SWARM_UP_MIN_TIMEOUT_S = 300.0
"""A Swarm ``up`` pushes images and waits for every task on every node: never less than this."""


def _quiet(_: str) -> None:
    """Say nothing (the default progress callback)."""


@runtime_checkable
class Described(Protocol):
    """A report a task prints, line by line: text, or a rich renderable such as a table."""

    def describe(self) -> Sequence[RenderableType]: ...


@runtime_checkable
class Documented(Described, Protocol):
    """A report with a JSON document for ``--json`` (docs/json-output.md)."""

    def to_json(self) -> dict[str, Any]: ...


class Checked(Documented, Protocol):
    """A status report: ``ok`` False makes ``status`` exit 1."""

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class Rendered:
    """What ``render`` changed (or, with ``dry_run``, would change) and what to do next."""

    changes: list[FileChange]
    written: list[str]
    dry_run: bool
    next_step: str | None = None  # printed after a real render (Kubernetes: it is not deployed)


class Target(Protocol):
    """What each target-aware command asks of a deployment target."""

    name: str  # compose | swarm | kubernetes

    def render(self, *, dry_run: bool = False) -> Rendered:
        """Validate, render the target's files, check them, write them atomically."""
        ...

    def plan(self) -> list[FileChange]:
        """What ``render`` would change, with a unified diff per file."""
        ...

    def up(self, *, timeout: float, dry_run: bool, say: Say, progress: Say) -> Described:
        """Start the stack or bring it to the spec; wait until it serves."""
        ...

    def down(self, *, volumes: bool) -> list[str]:
        """Remove what tfstack created for the stack; the names of what went."""
        ...

    def status(self) -> Checked:
        """Models, versions, labels and services as they are now."""
        ...

    def predict(
        self,
        ref: ModelRef,
        body: Mapping[str, Any],
        *,
        grpc: bool = False,
        signature: str | None = None,
        api_key: str | None = None,
        ca_file: Path | None = None,
    ) -> dict[str, Any]:
        """One predict request through the stack; the answer as JSON."""
        ...

    def rollout(
        self,
        request: RolloutRequest,
        *,
        dry_run: bool = False,
        resume: bool = False,
        abort: bool = False,
        model_image: str | None = None,
        serving_image: str | None = None,
    ) -> Described:
        """Put a new version into service (Kubernetes: say what a new image changes)."""
        ...

    def rollback(self, model: str, *, dry_run: bool = False) -> Outcome:
        """Move the model's labels back to the previous version."""
        ...


def target_for(
    spec_path: Path,
    override: str = "",
    *,
    source_root: Path,
    project_root: Path | None = None,
    say: Say = _quiet,
) -> Target:
    """The target a command runs on: ``override`` (``--target``), else the spec's ``deploy.target``.

    ``source_root`` is the tfstack checkout (images, rendered files); the stack's own project root
    is the spec's grandparent (``<root>/config/stack.yaml``). ``project_root`` bounds the spec's
    relative paths while ``deploy.target`` is read. An unknown override is a UsageError.
    """
    name = deploy_target(spec_path, override, project_root=project_root)
    compose = ComposeTarget(spec_path, source_root=source_root, say=say)
    if name == "swarm":
        return SwarmTarget(spec_path, source_root=source_root, say=say)
    if name == "kubernetes":
        # Only the spec's deploy.target keeps the local Compose stack (see the module docstring).
        local = None if override else compose
        return KubernetesTarget(spec_path, source_root=source_root, local=local)
    return compose


def _rollout_context(spec_path: Path, model: str, say: Say) -> Context:
    return Context(spec_path, spec_path.resolve().parent.parent, model, say=say)


def _check_model_rollout(request: RolloutRequest, *, promote_resume_or_abort: bool) -> None:
    """The options a model rollout (Compose, Swarm) cannot do without."""
    if not request.model:
        raise UsageError("--model is required (see --help)")
    if not (request.version or promote_resume_or_abort):
        raise UsageError("--version is required for a rollout (see --help)")


def _model_rollout(
    run: Callable[..., Outcome],
    spec_path: Path,
    request: RolloutRequest,
    say: Say,
    *,
    dry_run: bool,
    resume: bool,
    abort: bool,
) -> Outcome:
    """A model rollout (Compose, Swarm): the options checked, then ``run`` with the context."""
    _check_model_rollout(request, promote_resume_or_abort=request.promote or resume or abort)
    context = _rollout_context(spec_path, request.model, say)
    return run(context, request, dry_run=dry_run, resume=resume, abort=abort)


class ComposeTarget:
    """The stack as a Compose project on this engine (the default target)."""

    name = "compose"

    def __init__(self, spec_path: Path, *, source_root: Path, say: Say = _quiet) -> None:
        self.spec_path = spec_path
        self.source_root = source_root
        self.say = say

    def _lifecycle(self) -> tfstack.stack.lifecycle.Lifecycle:
        # No root: the stack's project root is the spec's grandparent, so a spec elsewhere runs
        # the stack living there; images and their sources come from the checkout.
        return tfstack.stack.lifecycle.Lifecycle(
            self.spec_path, source_root=self.source_root, say=self.say
        )

    def render(self, *, dry_run: bool = False) -> Rendered:
        report = tfstack.render.render_to_disk(self.spec_path, self.source_root, dry_run=dry_run)
        return Rendered(report.changes, report.written, report.dry_run)

    def plan(self) -> list[FileChange]:
        return tfstack.render.plan_render(self.spec_path, self.source_root)

    def up(self, *, timeout: float, dry_run: bool, say: Say, progress: Say) -> Described:
        lifecycle = tfstack.stack.lifecycle.Lifecycle(
            self.spec_path, source_root=self.source_root, say=say, progress=progress
        )
        return lifecycle.up(timeout=timeout, dry_run=dry_run)

    def down(self, *, volumes: bool) -> list[str]:
        return self._lifecycle().down(volumes=volumes)

    def status(self) -> Checked:
        return self._lifecycle().status()

    def predict(
        self,
        ref: ModelRef,
        body: Mapping[str, Any],
        *,
        grpc: bool = False,
        signature: str | None = None,
        api_key: str | None = None,
        ca_file: Path | None = None,
    ) -> dict[str, Any]:
        return tfstack.stack.predict.predict(
            self.spec_path,
            ref,
            body,
            grpc=grpc,
            signature=signature,
            api_key=api_key,
            ca_file=ca_file,
        )

    def rollout(
        self,
        request: RolloutRequest,
        *,
        dry_run: bool = False,
        resume: bool = False,
        abort: bool = False,
        model_image: str | None = None,
        serving_image: str | None = None,
    ) -> Described:
        return _model_rollout(
            tfstack.rollout.run_rollout,
            self.spec_path,
            request,
            self.say,
            dry_run=dry_run,
            resume=resume,
            abort=abort,
        )

    def rollback(self, model: str, *, dry_run: bool = False) -> Outcome:
        context = _rollout_context(self.spec_path, model, self.say)
        return tfstack.rollout.run_rollback(context, dry_run=dry_run)


class SwarmTarget:
    """The stack on a Docker Swarm through its manager (docs/swarm.md)."""

    name = "swarm"

    def __init__(self, spec_path: Path, *, source_root: Path, say: Say = _quiet) -> None:
        self.spec_path = spec_path
        self.source_root = source_root
        self.project_root = spec_path.resolve().parent.parent
        self.say = say

    def render(self, *, dry_run: bool = False) -> Rendered:
        report = tfstack.stack.swarm.render_swarm_to_disk(
            self.spec_path, self.source_root, dry_run=dry_run
        )
        return Rendered(report.changes, report.written, report.dry_run)

    def plan(self) -> list[FileChange]:
        return tfstack.stack.swarm.swarm_plan(self.spec_path, self.project_root)

    def up(self, *, timeout: float, dry_run: bool, say: Say, progress: Say) -> Described:
        return tfstack.stack.swarm.swarm_up(
            self.spec_path,
            self.project_root,
            timeout=max(timeout, SWARM_UP_MIN_TIMEOUT_S),
            dry_run=dry_run,
            say=say,
        )

    def down(self, *, volumes: bool) -> list[str]:
        # Each node's models volume always goes: the next up copies the model image in again.
        return tfstack.stack.swarm.swarm_down(self.spec_path, self.project_root)

    def status(self) -> Checked:
        return tfstack.stack.swarm.swarm_status(self.spec_path, self.project_root)

    def predict(
        self,
        ref: ModelRef,
        body: Mapping[str, Any],
        *,
        grpc: bool = False,
        signature: str | None = None,
        api_key: str | None = None,
        ca_file: Path | None = None,
    ) -> dict[str, Any]:
        if api_key or ca_file:
            raise UsageError(
                "--api-key and --ca-file: not with --target swarm",
                hint="the Swarm door has neither TLS nor API keys (the swarm rules refuse "
                "frontend.tls and frontend.auth): drop both options, or use --target compose",
            )
        return tfstack.stack.swarm.swarm_predict(
            self.spec_path, ref, body, grpc=grpc, signature=signature
        )

    def rollout(
        self,
        request: RolloutRequest,
        *,
        dry_run: bool = False,
        resume: bool = False,
        abort: bool = False,
        model_image: str | None = None,
        serving_image: str | None = None,
    ) -> Described:
        return _model_rollout(
            tfstack.stack.swarm_rollout.swarm_rollout,
            self.spec_path,
            request,
            self.say,
            dry_run=dry_run,
            resume=resume,
            abort=abort,
        )

    def rollback(self, model: str, *, dry_run: bool = False) -> Outcome:
        context = _rollout_context(self.spec_path, model, self.say)
        return tfstack.stack.swarm_rollout.swarm_rollback(context, dry_run=dry_run)


class KubernetesTarget:
    """A Kustomize base in ``deploy/kubernetes/``, rendered and validated; no cluster is reached.

    ``local`` is the Compose stack the running-stack commands use for a spec whose
    ``deploy.target`` is kubernetes; None (an explicit ``--target kubernetes``) refuses them.
    """

    name = "kubernetes"

    def __init__(
        self, spec_path: Path, *, source_root: Path, local: ComposeTarget | None = None
    ) -> None:
        self.spec_path = spec_path
        self.source_root = source_root
        self.local = local

    def _local_stack(self, command: str, instead: str) -> ComposeTarget:
        if self.local is None:
            raise UsageError(
                f"`{command} --target kubernetes`: tfstack renders and validates the Kubernetes "
                "target but does not deploy it or reach a cluster",
                hint=f"{instead}; for the local Compose stack use --target compose",
            )
        return self.local

    def render(self, *, dry_run: bool = False) -> Rendered:
        report = tfstack.kubernetes.render_kubernetes(
            self.spec_path, self.source_root, dry_run=dry_run
        )
        return Rendered(
            report.changes,
            report.written,
            report.dry_run,
            next_step=f"rendered and validated, not deployed: kubectl apply -k {KUBERNETES_DIR}",
        )

    def plan(self) -> list[FileChange]:
        # The Kustomize base's diff, validated as `render --target kubernetes` would write it
        # (before, this showed the Compose files' diff: not what this target renders).
        return tfstack.kubernetes.render_kubernetes(
            self.spec_path, self.source_root, dry_run=True
        ).changes

    def up(self, *, timeout: float, dry_run: bool, say: Say, progress: Say) -> Described:
        local = self._local_stack(
            "up",
            f"render with `render --target kubernetes`, then apply {KUBERNETES_DIR} with your "
            f"pipeline (kubectl apply -k {KUBERNETES_DIR})",
        )
        return local.up(timeout=timeout, dry_run=dry_run, say=say, progress=progress)

    def down(self, *, volumes: bool) -> list[str]:
        local = self._local_stack("down", f"remove it with kubectl delete -k {KUBERNETES_DIR}")
        return local.down(volumes=volumes)

    def status(self) -> Checked:
        local = self._local_stack("status", f"ask the cluster: kubectl get -k {KUBERNETES_DIR}")
        return local.status()

    def predict(
        self,
        ref: ModelRef,
        body: Mapping[str, Any],
        *,
        grpc: bool = False,
        signature: str | None = None,
        api_key: str | None = None,
        ca_file: Path | None = None,
    ) -> dict[str, Any]:
        local = self._local_stack(
            "predict",
            "send the request to the cluster's Service or Ingress (docs/kubernetes.md, Front door)",
        )
        return local.predict(
            ref, body, grpc=grpc, signature=signature, api_key=api_key, ca_file=ca_file
        )

    def rollout(
        self,
        request: RolloutRequest,
        *,
        dry_run: bool = False,
        resume: bool = False,
        abort: bool = False,
        model_image: str | None = None,
        serving_image: str | None = None,
    ) -> Described:
        # A new image is the cluster's rollout; the model options are the Compose target's.
        return tfstack.kubernetes.kubernetes_rollout_plan(
            self.spec_path,
            self.source_root,
            dry_run=dry_run,
            model_image=model_image,
            serving_image=serving_image,
        )

    def rollback(self, model: str, *, dry_run: bool = False) -> Outcome:
        local = self._local_stack(
            "rollback",
            "undo the cluster's rollout: kubectl rollout undo deployment/<name> "
            "(docs/kubernetes.md)",
        )
        return local.rollback(model, dry_run=dry_run)


__all__ = [
    "Checked",
    "ComposeTarget",
    "Described",
    "Documented",
    "KubernetesTarget",
    "Rendered",
    "SwarmTarget",
    "Target",
    "target_for",
]
