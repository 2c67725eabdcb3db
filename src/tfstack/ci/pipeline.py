"""Pipelines for a tfstack project: plan (pure: provider + spec -> {path: text}), then write.

The pipeline runs what a developer runs, through ``./tfstack``: lint (the spec, hadolint on every
committed Dockerfile, actionlint on the workflow itself), build the images once and hand them to
later jobs as an artifact (``docker save``/``docker load``), unit tests, integration tests (the
test kit), a rollout rehearsal on an ephemeral stack under bounded load (``bench rollout``: zero
failed requests is its gate), diagnostics uploaded always, and a deploy behind manual approval on
the default branch. docs/ci.md describes each job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from tfstack.core.files import FileChange, plan_files, write_files_atomically
from tfstack.errors import UsageError, WriteError
from tfstack.spec.frontend import frontend_enabled
from tfstack.spec.load import load_spec
from tfstack.spec.model import model_repository_dir

PROVIDERS: tuple[str, ...] = ("github", "gitlab")
GITHUB_WORKFLOW = ".github/workflows/tfstack.yml"
GITHUB_ACTIONLINT_CONFIG = ".github/actionlint.yaml"
GITLAB_PIPELINE = ".gitlab-ci.yml"
GITLAB_STAGES: tuple[str, ...] = ("lint", "build", "test", "integration", "rehearsal", "deploy")
GITLAB_JOBS: dict[str, str] = {
    "lint": "lint",
    "build": "build",
    "unit": "test",
    "integration": "integration",
    "rehearsal": "rehearsal",
    "deploy": "deploy",
}
DEPLOY_RUNNER_LABEL = "tfstack-deploy"
"""The self-hosted runner (GitHub label, GitLab tag) that can reach the deployment target."""


@dataclass(frozen=True)
class PinnedAction:
    """A GitHub action pinned by full commit SHA; ``tag`` is shown beside it in a comment."""

    repository: str
    sha: str
    tag: str

    @property
    def uses(self) -> str:
        return f"{self.repository}@{self.sha} # {self.tag}"


ACTIONS: dict[str, PinnedAction] = {
    "checkout": PinnedAction(
        "actions/checkout", "3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"
    ),
    "upload_artifact": PinnedAction(
        "actions/upload-artifact", "bbbca2ddaa5d8feaa63e36b76fdaad77386f024f", "v7.0.0"
    ),
    "download_artifact": PinnedAction(
        "actions/download-artifact", "3e5f45b2cfb9172054b4087a40e8e0b5a5461e7c", "v8.0.1"
    ),
}

_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "github": (
        (GITHUB_WORKFLOW, "github-workflow.yml.j2"),
        (GITHUB_ACTIONLINT_CONFIG, "actionlint.yaml.j2"),
    ),
    "gitlab": ((GITLAB_PIPELINE, "gitlab-ci.yml.j2"),),
}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("tfstack.ci", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise UsageError(
            f"unknown CI provider {provider!r}",
            hint=f"use --provider {' or '.join(PROVIDERS)}",
        )


def _inside(path: Path, root: Path, what: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UsageError(
            f"{what} {path} is outside the project {root}",
            hint="the pipeline runs from a clone of the project: keep it inside",
        ) from None


def plan_pipeline(provider: str, spec_path: Path, root: Path, out_dir: Path) -> dict[str, str]:
    """The pipeline files for ``provider``: relative path below ``out_dir`` -> text (pure).

    ``spec_path`` is read (without disk checks) for the project name, the deployment target, the
    front door and the model repository; an invalid spec is a SpecError listing its problems.
    """
    _check_provider(provider)
    spec = load_spec(spec_path, check_disk=False, project_root=root)
    models = _inside(model_repository_dir(spec, spec_path), root, "the model repository")
    context = {
        "spec": _inside(spec_path, root, "the spec"),
        "project": spec.project,
        "target": spec.deploy.target,
        "frontend": frontend_enabled(spec.frontend, spec.serving.replicas),
        "models": models,
        "first_model": spec.models[0].name,
        "actions": ACTIONS,
        "workflow": GITHUB_WORKFLOW,
        "stages": GITLAB_STAGES,
        "deploy_label": DEPLOY_RUNNER_LABEL,
    }
    env = _environment()
    return {
        path: env.get_template(template).render(context) for path, template in _TEMPLATES[provider]
    }


def write_pipeline(
    provider: str,
    spec_path: Path,
    root: Path,
    out_dir: Path,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> list[FileChange]:
    """Plan the pipeline, then write it atomically below ``out_dir`` unless ``dry_run``.

    A file that exists with other content is a UsageError unless ``force`` (nothing is written);
    identical files are left alone.
    """
    files = plan_pipeline(provider, spec_path, root, out_dir)
    changes = plan_files(out_dir, files)
    _refuse_overwrite(changes, out_dir, force=force)
    if not dry_run:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(
                f"cannot create the directory: {exc.strerror}",
                path=str(out_dir),
                hint="choose a --dir you can write to",
            ) from exc
        write_files_atomically(out_dir, files)
    return changes


def _refuse_overwrite(changes: list[FileChange], out_dir: Path, *, force: bool) -> None:
    different = [change.path for change in changes if change.action == "update"]
    if different and not force:
        shown = ", ".join(str(out_dir / path) for path in different)
        raise UsageError(
            f"{shown}: already there with different content; nothing written",
            hint="compare with `invoke ci init --dry-run`, then pass --force to overwrite",
        )
