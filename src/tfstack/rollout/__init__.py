"""Rollouts: new model versions into service with zero failed requests.

``plan`` (pure: request and observation to steps), ``apply`` (steps through a ``Runner``, with the
journal), ``runner`` (the real runner against the stack), ``run`` (the ``invoke rollout`` /
``rollback`` entry points), ``journal`` (the on-disk record), ``staging`` (a candidate version
copied and checked) and ``verify`` (the side instance that proves it before serving it).

The functions ``plan.plan`` and ``apply.apply`` are not re-exported here: their names are their
modules' names.
"""

from tfstack.rollout.apply import ApplyResult, Runner, describe_steps, run_abort
from tfstack.rollout.plan import (
    DEFAULT_DRAIN_S,
    DEFAULT_LATENCY_FACTOR,
    RELOAD_TIMEOUT_S,
    Observed,
    RolloutRequest,
    parse_traffic,
    plan_abort,
    plan_promote,
    plan_rollback,
    plan_rollout,
    previous_from_history,
)
from tfstack.rollout.run import Outcome, observe, run_rollback, run_rollout
from tfstack.rollout.runner import Context, StackRunner, replicas_of, state_of, versions_on_disk

__all__ = [
    "DEFAULT_DRAIN_S",
    "DEFAULT_LATENCY_FACTOR",
    "RELOAD_TIMEOUT_S",
    "ApplyResult",
    "Context",
    "Observed",
    "Outcome",
    "RolloutRequest",
    "Runner",
    "StackRunner",
    "describe_steps",
    "observe",
    "parse_traffic",
    "plan_abort",
    "plan_promote",
    "plan_rollback",
    "plan_rollout",
    "previous_from_history",
    "replicas_of",
    "run_abort",
    "run_rollback",
    "run_rollout",
    "state_of",
    "versions_on_disk",
]
