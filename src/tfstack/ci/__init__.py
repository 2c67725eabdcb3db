"""`invoke ci init`: CI pipelines for a tfstack project (GitHub Actions, GitLab CI)."""

from __future__ import annotations

from tfstack.ci.pipeline import (
    ACTIONS,
    GITHUB_WORKFLOW,
    GITLAB_JOBS,
    GITLAB_PIPELINE,
    GITLAB_STAGES,
    PROVIDERS,
    PinnedAction,
    plan_pipeline,
    write_pipeline,
)

__all__ = [
    "ACTIONS",
    "GITHUB_WORKFLOW",
    "GITLAB_JOBS",
    "GITLAB_PIPELINE",
    "GITLAB_STAGES",
    "PROVIDERS",
    "PinnedAction",
    "plan_pipeline",
    "write_pipeline",
]
