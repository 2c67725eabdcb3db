"""``models[].slo``: the gates a candidate version must pass before it takes more traffic.

The gates compare the candidate with the stable version over the same window of live traffic
(see :mod:`tfstack.rollout.gates`): its error rate, its p99 latency (absolute and relative to
stable's) and, for mirrored traffic, how far its outputs are from stable's. A window with fewer
than ``min_requests`` candidate requests is extended (by ``window_seconds`` at a time) up to
``max_window_seconds``; past that the rollout stops instead of promoting on too little evidence.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SloSpec(_Frozen):
    """Gates for a model's rollouts; a gate left null is not checked."""

    error_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=0.01,
        description="Highest fraction of the candidate's requests that may fail (status not OK) "
        "in a window; 0.01 is 1 %.",
    )
    p99_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = Field(
        default=None, description="Highest p99 latency of the candidate, in milliseconds."
    )
    max_latency_ratio: Annotated[float, Field(ge=1, le=1000)] | None = Field(
        default=1.5,
        description="Highest candidate p99 / stable p99 over the same window (1.5: at most 50 % "
        "slower than stable).",
    )
    min_requests: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        default=100,
        description="Fewest candidate requests a window needs before the gates judge it; a "
        "quieter window is extended.",
    )
    window_seconds: Annotated[int, Field(ge=1, le=86_400)] = Field(
        default=60, description="Length of one measurement window, in seconds."
    )
    max_window_seconds: Annotated[int, Field(ge=1, le=86_400)] = Field(
        default=300,
        description="Longest a window may grow while it has fewer than min_requests; then the "
        "rollout stops with a message instead of promoting.",
    )
    max_output_diff: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="With mirrored traffic: largest absolute difference allowed between a "
        "candidate's and stable's numeric outputs for the same request.",
    )
