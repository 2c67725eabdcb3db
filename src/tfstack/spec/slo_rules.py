"""Semantic checks of ``models[].slo``: windows that can grow, gates that exist and can be read.

Run by :class:`tfstack.spec.rules.Checker` once the schema is valid; problems go to its reporter
with the model's YAML path (``models[2].slo.max_window_seconds``).
"""

from __future__ import annotations

from tfstack.spec.frontend_rules import AddProblem
from tfstack.spec.model import StackSpecFields
from tfstack.spec.slo import SloSpec
from tfstack.spec.yamlread import Loc

GATE_FIELDS = ("error_rate", "p99_ms", "max_latency_ratio", "max_output_diff")


def check_slos(spec: StackSpecFields, add: AddProblem) -> None:
    """Check every model's ``slo`` (models without one are not gated)."""
    for index, model in enumerate(spec.models):
        if model.slo is not None:
            _check_slo(spec, model.slo, ("models", index, "slo"), add)


def _check_slo(spec: StackSpecFields, slo: SloSpec, loc: Loc, add: AddProblem) -> None:
    if all(getattr(slo, name) is None for name in GATE_FIELDS):
        add(
            loc,
            "sets no gate: error_rate, p99_ms, max_latency_ratio and max_output_diff are all null",
            "give at least one gate (e.g. error_rate: 0.01), or remove slo",
        )
    if slo.max_window_seconds < slo.window_seconds:
        add(
            (*loc, "max_window_seconds"),
            f"max_window_seconds ({slo.max_window_seconds}) is shorter than window_seconds "
            f"({slo.window_seconds}): a window could never be measured",
            f"make max_window_seconds at least {slo.window_seconds} (the default is 300)",
        )
    if not spec.monitoring.enabled:
        add(
            loc,
            "the gates read the servers' Prometheus metrics, but monitoring.enabled is false",
            "set monitoring.enabled: true, or remove slo",
        )
