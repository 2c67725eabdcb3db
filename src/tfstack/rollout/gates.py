"""The SLO gates of a progressive rollout, pure: windows of measurements in, a decision out.

Inputs are the candidate's and stable's :class:`~tfstack.serving.metrics.Window` over the same
interval (and, with mirrored traffic, the largest output difference seen). The decision is one of

* ``pass``: every gate set in ``models[].slo`` holds; the rollout may take its next step;
* ``breach``: a gate is broken; the rollout rolls back (traffic to the candidate goes to 0);
* ``extend``: too few requests to judge (under ``min_requests``); measure a longer window;
* ``stop``: still too few requests at ``max_window_seconds``; stop without promoting.

Every gate's measured figure is reported next to its limit, so the message of a breach or a stop
says what was measured, against what, over how many requests and seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tfstack.serving.metrics import Window
from tfstack.spec.slo import SloSpec

Outcome = Literal["pass", "breach", "extend", "stop"]
GateStatus = Literal["pass", "fail", "unmeasured"]
P99 = 0.99


@dataclass(frozen=True)
class GateResult:
    """One gate: its limit, what was measured (None: could not be) and whether it held."""

    gate: str
    limit: float
    measured: float | None
    status: GateStatus
    detail: str

    def line(self) -> str:
        """``error_rate: 0.034 > limit 0.01 (17 of 500 requests)``."""
        if self.measured is None:
            return f"{self.gate}: not measured, limit {_fmt(self.limit)} ({self.detail})"
        sign = "<=" if self.status == "pass" else ">"
        return f"{self.gate}: {_fmt(self.measured)} {sign} limit {_fmt(self.limit)} ({self.detail})"

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "limit": self.limit,
            "measured": self.measured,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Decision:
    """What the gates say about one window, and why."""

    outcome: Outcome
    window_seconds: float
    candidate_requests: float
    stable_requests: float
    gates: tuple[GateResult, ...]
    message: str
    next_window_seconds: float | None = None  # for ``extend``: how long the next window lasts

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if g.status == "fail")

    def report(self) -> list[str]:
        """The message, then one line per gate (measured figure next to the limit)."""
        return [self.message, *(f"  {g.line()}" for g in self.gates)]

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "window_seconds": self.window_seconds,
            "candidate_requests": self.candidate_requests,
            "stable_requests": self.stable_requests,
            "next_window_seconds": self.next_window_seconds,
            "message": self.message,
            "gates": [g.to_json() for g in self.gates],
        }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _error_gate(slo: SloSpec, candidate: Window) -> GateResult | None:
    if slo.error_rate is None:
        return None
    detail = f"{candidate.errors:.0f} of {candidate.requests:.0f} candidate requests failed"
    rate = candidate.error_rate
    if rate is None:
        return GateResult("error_rate", slo.error_rate, None, "unmeasured", detail)
    status: GateStatus = "pass" if rate <= slo.error_rate else "fail"
    return GateResult("error_rate", slo.error_rate, rate, status, detail)


def _p99_gate(slo: SloSpec, candidate: Window) -> GateResult | None:
    if slo.p99_ms is None:
        return None
    p99 = candidate.quantile_ms(P99)
    detail = f"candidate p99 over {candidate.latency.count:.0f} requests, ms"
    if p99 is None:
        return GateResult("p99_ms", slo.p99_ms, None, "unmeasured", detail)
    return GateResult("p99_ms", slo.p99_ms, p99, "pass" if p99 <= slo.p99_ms else "fail", detail)


def _ratio_gate(slo: SloSpec, candidate: Window, stable: Window) -> GateResult | None:
    if slo.max_latency_ratio is None:
        return None
    mine, theirs = candidate.quantile_ms(P99), stable.quantile_ms(P99)
    if mine is None or theirs is None or theirs <= 0:
        detail = "needs latency of both candidate and stable in the window"
        return GateResult("max_latency_ratio", slo.max_latency_ratio, None, "unmeasured", detail)
    ratio = mine / theirs
    detail = f"candidate p99 {_fmt(mine)} ms / stable p99 {_fmt(theirs)} ms"
    status: GateStatus = "pass" if ratio <= slo.max_latency_ratio else "fail"
    return GateResult("max_latency_ratio", slo.max_latency_ratio, ratio, status, detail)


def _diff_gate(slo: SloSpec, output_diff: float | None) -> GateResult | None:
    if slo.max_output_diff is None or output_diff is None:
        return None  # only with mirrored traffic
    status: GateStatus = "pass" if output_diff <= slo.max_output_diff else "fail"
    detail = "largest |candidate - stable| over mirrored requests"
    return GateResult("max_output_diff", slo.max_output_diff, output_diff, status, detail)


def evaluate(
    slo: SloSpec,
    candidate: Window,
    stable: Window,
    *,
    elapsed_seconds: float,
    output_diff: float | None = None,
) -> Decision:
    """Judge one window; ``elapsed_seconds`` is how long this window has been measured so far.

    Too few candidate requests (or too few stable ones when the latency ratio is gated) extends
    the window by ``window_seconds`` up to ``max_window_seconds``, then stops. Before
    ``min_requests``, more candidate errors than ``error_rate`` allows in ``min_requests`` requests
    are a breach at once: a failing candidate is not fed more traffic to prove it.
    """
    gates = tuple(
        g
        for g in (
            _error_gate(slo, candidate),
            _p99_gate(slo, candidate),
            _ratio_gate(slo, candidate, stable),
            _diff_gate(slo, output_diff),
        )
        if g is not None
    )
    figures = (
        f"{candidate.requests:.0f} candidate and {stable.requests:.0f} stable requests "
        f"in {elapsed_seconds:.0f} s"
    )

    def decision(outcome: Outcome, message: str, next_window: float | None = None) -> Decision:
        return Decision(
            outcome,
            elapsed_seconds,
            candidate.requests,
            stable.requests,
            gates,
            message,
            next_window,
        )

    early = (
        slo.error_rate is not None
        and candidate.errors > 0
        and candidate.errors > math.floor(slo.error_rate * slo.min_requests)
    )
    failed = [g for g in gates if g.status == "fail"]
    if early and candidate.requests < slo.min_requests:
        return decision(
            "breach",
            f"SLO breached: {candidate.errors:.0f} candidate errors already exceed error_rate "
            f"{_fmt(slo.error_rate or 0)} of min_requests {slo.min_requests} ({figures})",
        )
    short = [f"candidate {candidate.requests:.0f}"] if candidate.requests < slo.min_requests else []
    if slo.max_latency_ratio is not None and stable.requests < slo.min_requests:
        short.append(f"stable {stable.requests:.0f}")
    if short:
        need = f"{' and '.join(short)} of min_requests {slo.min_requests}"
        if elapsed_seconds + slo.window_seconds <= slo.max_window_seconds:
            grown = elapsed_seconds + slo.window_seconds
            return decision(
                "extend",
                f"too little traffic to judge: {need} in {elapsed_seconds:.0f} s; "
                f"measuring on to {grown:.0f} s",
                grown,
            )
        return decision(
            "stop",
            f"stopped without promoting: {need} after {elapsed_seconds:.0f} s "
            f"(max_window_seconds {slo.max_window_seconds}); send more traffic, lower "
            "min_requests or raise max_window_seconds in models[].slo",
        )
    if failed:
        names = ", ".join(g.gate for g in failed)
        return decision("breach", f"SLO breached ({names}) over {figures}")
    return decision("pass", f"every gate holds over {figures}")
