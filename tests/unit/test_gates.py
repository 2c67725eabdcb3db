"""tfstack.rollout.gates: SLO verdicts from candidate and stable windows, figures next to limits."""

from __future__ import annotations

import math

from tfstack.rollout.gates import evaluate
from tfstack.serving.metrics import Histogram, Window
from tfstack.spec import SloSpec

BOUNDS = (1000.0, 2000.0, 4000.0, 8000.0, math.inf)  # µs


def win(requests: int, errors: int = 0, *, fast: float = 1.0, seconds: float = 60.0) -> Window:
    """``requests`` with a share ``fast`` under 1 ms and the rest between 4 and 8 ms."""
    quick = round(requests * fast)
    cumulative = (quick, quick, quick, requests, requests)
    return Window(seconds, requests, errors, Histogram(BOUNDS, tuple(map(float, cumulative))))


SLO = SloSpec(error_rate=0.01, p99_ms=5.0, max_latency_ratio=1.5, min_requests=100)


def test_healthy_candidate_passes_with_figures() -> None:
    """Every gate holds: pass, each measured figure beside its limit."""
    d = evaluate(SLO, win(500), win(5000), elapsed_seconds=60)
    assert d.outcome == "pass"
    assert [g.gate for g in d.gates] == ["error_rate", "p99_ms", "max_latency_ratio"]
    assert all(g.status == "pass" for g in d.gates)
    assert d.gates[0].measured == 0.0
    assert d.gates[2].measured == 1.0
    assert d.report()[1] == "  error_rate: 0 <= limit 0.01 (0 of 500 candidate requests failed)"


def test_error_rate_breach_reports_the_rate() -> None:
    """3 % errors against a 1 % gate is a breach naming the gate and the counts."""
    d = evaluate(SLO, win(500, errors=15), win(5000), elapsed_seconds=60)
    assert d.outcome == "breach"
    assert [g.gate for g in d.failed] == ["error_rate"]
    assert d.failed[0].measured == 0.03
    assert "SLO breached (error_rate)" in d.message
    assert "error_rate: 0.03 > limit 0.01 (15 of 500 candidate requests failed)" in d.report()[1]


def test_latency_breach_absolute_and_relative() -> None:
    """A candidate slow at p99 breaks p99_ms and the ratio to a fast stable."""
    d = evaluate(SLO, win(500, fast=0.9), win(5000), elapsed_seconds=60)
    assert d.outcome == "breach"
    assert {g.gate for g in d.failed} == {"p99_ms", "max_latency_ratio"}
    ratio = next(g for g in d.gates if g.gate == "max_latency_ratio")
    assert ratio.measured is not None and ratio.measured > 1.5
    assert "stable p99 0.99 ms" in ratio.detail


def test_quiet_window_is_extended_then_stopped() -> None:
    """Under min_requests the window grows by window_seconds up to the limit, then stops."""
    slo = SloSpec(min_requests=100, window_seconds=60, max_window_seconds=180)
    first = evaluate(slo, win(40), win(4000), elapsed_seconds=60)
    assert (first.outcome, first.next_window_seconds) == ("extend", 120)
    assert "candidate 40 of min_requests 100 in 60 s" in first.message
    second = evaluate(slo, win(80), win(8000), elapsed_seconds=120)
    assert (second.outcome, second.next_window_seconds) == ("extend", 180)
    last = evaluate(slo, win(90), win(9000), elapsed_seconds=180)
    assert last.outcome == "stop"
    assert "stopped without promoting: candidate 90 of min_requests 100 after 180 s" in last.message
    assert "max_window_seconds 180" in last.message


def test_ratio_gate_needs_stable_traffic_too() -> None:
    """With the ratio gated, a stable with too few requests is not compared: extend."""
    d = evaluate(SLO, win(500), win(10), elapsed_seconds=60)
    assert d.outcome == "extend"
    assert "stable 10 of min_requests 100" in d.message
    no_ratio = SloSpec(error_rate=0.01, max_latency_ratio=None)
    assert evaluate(no_ratio, win(500), win(0), elapsed_seconds=60).outcome == "pass"


def test_many_errors_breach_before_min_requests() -> None:
    """More errors than min_requests allows are a breach at once, not a longer window."""
    d = evaluate(SLO, win(30, errors=2), win(3000), elapsed_seconds=60)
    assert d.outcome == "breach"
    assert "2 candidate errors already exceed error_rate 0.01 of min_requests 100" in d.message
    one = evaluate(SLO, win(30, errors=1), win(3000), elapsed_seconds=60)
    assert one.outcome == "extend"  # one error of 100 is still within 1 %


def test_output_diff_only_with_mirrored_traffic() -> None:
    """max_output_diff is judged when a mirror measured a difference, ignored otherwise."""
    slo = SloSpec(max_output_diff=0.001, max_latency_ratio=None)
    assert [g.gate for g in evaluate(slo, win(500), win(0), elapsed_seconds=60).gates] == [
        "error_rate"
    ]
    d = evaluate(slo, win(500), win(0), elapsed_seconds=60, output_diff=0.02)
    assert d.outcome == "breach" and d.failed[0].gate == "max_output_diff"


def test_decision_json_is_plain() -> None:
    """to_json gives plain data with the outcome and every gate."""
    data = evaluate(SLO, win(500, errors=15), win(5000), elapsed_seconds=60).to_json()
    assert data["outcome"] == "breach"
    assert data["gates"][0] == {
        "gate": "error_rate",
        "limit": 0.01,
        "measured": 0.03,
        "status": "fail",
        "detail": "15 of 500 candidate requests failed",
    }
