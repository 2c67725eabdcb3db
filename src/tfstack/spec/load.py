"""Loading and validating a stack spec: YAML with line numbers, schema errors, semantic checks.

``load_spec(path)`` is the one way the rest of tfstack reads ``config/stack.yaml``: it returns a
frozen :class:`~tfstack.spec.StackSpec` or raises :class:`~tfstack.errors.SpecError` carrying every
problem found (file, line, YAML path such as ``models[2].labels.canary``, message, hint). Nothing
else ever escapes, and nothing is written.

Three phases, each reporting all of its problems:

1. **YAML**: size, encoding and syntax; one document whose top level is a mapping; no aliases (so no
   "billion laughs"), bounded nesting, no duplicate keys, only plain JSON-like scalar types. Mapping
   keys are always kept as strings (``1:`` is the key ``"1"``, ``on:`` is ``"on"``).
2. **Schema**: the typed model in :mod:`tfstack.spec` (pydantic), its errors translated into what
   was expected, with "did you mean" hints for unknown keys and one clear message for a bad version
   policy.
3. **Semantics**: what TF Serving or Docker would reject at start or reload (tfserving-contract
   sections 2-4), and what would make tfstack's own later steps fail. With ``check_disk`` the model
   repository is inspected too (file names only: nothing here imports TensorFlow). Semantic checks
   run once the schema is valid.

Version directory policy: TF Serving silently ignores children of a model directory whose names do
not parse as integers. tfstack treats such a directory (``v2``, ``1.5``, ``-3``) as an error because
it is nearly always a mistake that would leave a version unserved without a word. Names starting
with ``.`` are the exception: they are reserved for staging a version before it is renamed into
place, and are ignored like TF Serving does. Plain files are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tfstack.errors import SpecError, SpecProblem, UsageError
from tfstack.spec.deploy import DEPLOY_TARGETS
from tfstack.spec.kubernetes_rules import check_kubernetes_mapping, to_spec_problems
from tfstack.spec.model import (
    StackSpecFields,
)
from tfstack.spec.rules import Checker, ModelInventory
from tfstack.spec.schema_errors import schema_problems
from tfstack.spec.swarm_rules import check_swarm
from tfstack.spec.yamlread import count_noun, read_yaml

VALIDATE_SCHEMA = "tfstack.validate/v1"
"""``invoke validate --json``: the document's ``schema`` (docs/json-output.md)."""


class StackSpec(StackSpecFields):
    """A whole TF Serving deployment: ``config/stack.yaml``, with its named constructor."""

    @classmethod
    def from_yaml(cls, path: Path, *, check_disk: bool = True) -> StackSpec:
        """Load and validate a spec file (see :func:`load_spec`)."""
        return load_spec(path, check_disk=check_disk)


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`check_spec` found; ``spec`` is None when the schema phase failed."""

    path: Path
    problems: list[SpecProblem]
    spec: StackSpec | None = None
    inventory: tuple[ModelInventory, ...] = ()
    checked_disk: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems and self.spec is not None

    def raise_for_problems(self) -> StackSpec:
        """The spec, or SpecError with every problem."""
        if self.problems or self.spec is None:
            raise SpecError(self.problems)
        return self.spec

    def to_json(self) -> dict[str, Any]:
        """``invoke validate --json`` (docs/json-output.md, schema ``tfstack.validate/v1``)."""
        return {
            "schema": VALIDATE_SCHEMA,
            "spec": str(self.path),
            "ok": self.ok,
            "checked_disk": self.checked_disk,
            "models": [model.name for model in self.spec.models] if self.spec else [],
            "problems": [
                {
                    "file": problem.file,
                    "line": problem.line,
                    "yaml_path": problem.yaml_path,
                    "message": problem.message,
                    "hint": problem.hint,
                }
                for problem in self.problems
            ],
        }

    def summary(self) -> str:
        """One line for `invoke validate`: models, versions found, labels."""
        spec = self.raise_for_problems()
        labels = sum(len(m.labels) for m in spec.models)
        text = f"{self.path}: OK, {count_noun(len(spec.models), 'model')}"
        if self.checked_disk:
            found = sum(len(i.on_disk) for i in self.inventory)
            served = sum(len(i.served) for i in self.inventory)
            text += f", {count_noun(found, 'version')} found ({served} served)"
        else:
            text += " (model directories not checked)"
        return text + f", {count_noun(labels, 'label')}"


# --------------------------------------------------------------------------------------------
# Public entry points


def load_spec(
    path: Path,
    *,
    check_disk: bool = True,
    project_root: Path | None = None,
    target: str | None = None,
) -> StackSpec:
    """Read and validate a stack spec; raise SpecError listing every problem found.

    ``check_disk=False`` skips the checks of model directories and sample body files (for specs
    whose models are generated later). ``project_root`` bounds relative paths; by default it is the
    parent of the spec's directory (``<project>/config/stack.yaml``). ``target`` overrides
    ``deploy.target`` (``--target`` on the command line) for the target-specific checks.
    """
    report = check_spec(path, check_disk=check_disk, project_root=project_root, target=target)
    return report.raise_for_problems()


def deploy_target(spec_path: Path, override: str = "", *, project_root: Path | None = None) -> str:
    """The target a command works on: ``override`` (``--target``), else ``deploy.target``.

    An unknown override is a UsageError naming the targets; the spec is read without disk checks
    (the command that follows validates fully).
    """
    if override:
        if override not in DEPLOY_TARGETS:
            raise UsageError(
                f"unknown deployment target {override!r}",
                hint=f"use --target {' or '.join(DEPLOY_TARGETS)}",
            )
        return override
    spec = load_spec(spec_path, check_disk=False, project_root=project_root)
    return spec.deploy.target


def validate_spec(
    path: Path, *, check_disk: bool = True, project_root: Path | None = None
) -> list[SpecProblem]:
    """Every problem in the spec at ``path`` (empty when it is valid)."""
    return check_spec(path, check_disk=check_disk, project_root=project_root).problems


def check_spec(
    path: Path,
    *,
    check_disk: bool = True,
    project_root: Path | None = None,
    target: str | None = None,
) -> ValidationReport:
    """Run all three phases; the report carries the spec, the problems and the disk inventory.

    The deployment target (``target``, else the spec's ``deploy.target``) adds its own checks:
    for ``kubernetes``, everything that cannot map onto manifests (models the pods cannot see,
    unpinned images, a root user...), reported with file, line and YAML path like the rest; for
    ``swarm``, what a stack file cannot carry (see :mod:`tfstack.spec.swarm_rules`).
    """
    if target is not None and target not in DEPLOY_TARGETS:
        raise SpecError(
            [
                SpecProblem(
                    file=str(path),
                    yaml_path="deploy.target",
                    message=f"unknown deployment target {target!r}",
                    hint=f"use one of: {', '.join(DEPLOY_TARGETS)}",
                )
            ]
        )
    path = Path(path)
    file = str(path)
    data, lines, problems = read_yaml(path)
    if problems or data is None:
        return ValidationReport(path, problems, checked_disk=check_disk)
    try:
        spec = StackSpec.model_validate(data)
    except ValidationError as exc:
        return ValidationReport(
            path, schema_problems(exc, data, lines, file), checked_disk=check_disk
        )
    checker = Checker(spec, path, file, lines, check_disk=check_disk, project_root=project_root)
    checker.run()
    problems = list(checker.problems)
    if (target or spec.deploy.target) == "kubernetes":
        mapping = check_kubernetes_mapping(spec, spec.deploy.kubernetes)
        problems += to_spec_problems(mapping, file, lines.at)
    if (target or spec.deploy.target) == "swarm":
        problems += check_swarm(spec, file, lines.at)
    return ValidationReport(path, problems, spec, tuple(checker.inventory), checked_disk=check_disk)
