"""``invoke bench canary`` and the weighted-canary scenario the integration tests share.

:class:`CanaryScenario` is :class:`~tfstack.bench.rollout.RolloutScenario` behind the front door:
two replicas, metrics on, and ``models[].slo`` gates sized for a short test (windows of a few
seconds, ``min_requests`` 20). Besides the ``good`` candidate (y = 0.5x + 3) it writes two with
the same signatures that must not be promoted:

* ``slow``: answers right but runs a chain of matrix products first (p99 far above the gates);
* ``faulty``: answers right for x < 10 and fails (INVALID_ARGUMENT) for x >= 10.

The benchmark runs the good candidate through ``--traffic 10,50,100`` under the bounded load
generator and reports time per step, failed requests and stable's p99 during the canary against
before it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfstack.bench.loadgen import LoadGenerator, LoadReport, format_ms, stack_senders
from tfstack.bench.report import REPORT_DIR, chart_path, rollout_timeline
from tfstack.bench.rollout import (
    MODEL,
    RolloutScenario,
    _open_up,
    scenario_run,
    write_candidates,
)
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.models.demo import write_half_plus
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollout

FAULTY_FROM = 10.0  # the faulty candidate fails for x >= this
SLOW_MATMULS = 24
SLOW_SIZE = 400
TRAFFIC = (10, 50, 100)
TARGET_STABLE_P99_RATIO = 1.2

CANARY_SPEC = """\
# Throw-away weighted-canary project (tfstack.bench.canary); removed when done.
format: 1
project: {project}
model_repository: ../models
models:
  - name: {model}
    policy:
      latest: 1
    labels:
      stable: 1
    samples:
      - name: predict
        body: {{"instances": [1.0, 2.0, 5.0]}}
    slo:
      error_rate: 0.01
      p99_ms: {p99_ms}
      max_latency_ratio: {max_latency_ratio}
      min_requests: {min_requests}
      window_seconds: {window_seconds}
      max_window_seconds: {max_window_seconds}
serving:
  image: {image}
  grpc_port: {grpc_port}
  rest_port: {rest_port}
  max_load_retries: 0
  healthcheck: {healthcheck}
  replicas: 2
frontend:
  enabled: true
monitoring:
  enabled: true
"""


def write_canary_candidates(base: Path) -> dict[str, Path]:
    """v1, good, corrupt, incompatible (see tfstack.bench.rollout) plus slow and faulty."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    paths = write_candidates(base)

    def slow(x: Any) -> Any:
        # Input-dependent, so the graph optimizer cannot fold the products away at load time.
        m = tf.ones([SLOW_SIZE, SLOW_SIZE]) * (0.5 + 1e-6 * tf.abs(tf.reduce_mean(x)))
        for _ in range(SLOW_MATMULS):
            m = tf.linalg.matmul(m, m) / float(SLOW_SIZE)
        return tf.zeros_like(x) * tf.cast(tf.reduce_sum(m) > 1e30, tf.float32)

    def faulty(x: Any) -> Any:
        check = tf.debugging.assert_less(
            x, FAULTY_FROM, message="faulty candidate: x too large", summarize=3
        )
        with tf.control_dependencies([check]):
            return tf.zeros_like(x)

    for name, extra in (("slow", slow), ("faulty", faulty)):
        paths[name] = base / name
        write_half_plus(paths[name], offset=3.0, offset2=4.0, model_name=MODEL, extra=extra)
        _open_up(paths[name])
    return paths


@dataclass
class CanaryScenario(RolloutScenario):
    """A RolloutScenario with two replicas behind the door, metrics and ``slo`` gates."""

    slo: Mapping[str, Any] = field(
        default_factory=lambda: {
            "p99_ms": 250,
            "max_latency_ratio": 4,
            "min_requests": 20,
            "window_seconds": 5,
            "max_window_seconds": 30,
        }
    )

    def spec_text(self, template: str = CANARY_SPEC, **extra: Any) -> str:
        return super().spec_text(template, **{**self.slo, **extra})

    def load_with(
        self, body: Mapping[str, Any], *, max_seconds: float = 120.0, rate: float = 40.0
    ) -> LoadGenerator:
        """Load of unversioned and ``stable`` requests with ``body``, REST and gRPC."""
        senders = stack_senders(
            MODEL, rest_url=self.rest_url, grpc_target=self.grpc_target, body=body
        )
        return LoadGenerator(senders, rate=rate, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------
# The benchmark


@benchmark(
    "canary",
    "weighted canary 10 -> 50 -> 100 % with SLO gates under 40 req/s REST+gRPC load "
    "(the rollout benchmark's canary scenario)",
    default_runs=1,
)
def bench_canary(context: BenchContext) -> BenchResult:
    """Time per traffic step, failed requests, stable's p99 during the canary vs before."""
    say = context.say

    def steady(scenario: RolloutScenario) -> LoadGenerator:
        assert isinstance(scenario, CanaryScenario)
        return scenario.load_with({"instances": [1.0]}, max_seconds=150)

    with scenario_run(
        context, write=write_canary_candidates, make=CanaryScenario, load=steady
    ) as run:
        marks = run.marks
        marks["rollout:start"] = time.monotonic()
        say("rolling out version 2 with --traffic 10,50,100 under load")
        run_rollout(
            run.scenario.context(say),
            RolloutRequest(
                MODEL,
                version=2,
                source=str(run.candidates["good"]),
                traffic=TRAFFIC,
                analysis_s=8.0,
            ),
            on_step=run.mark,
        )
        marks["rollout:done"] = time.monotonic()
        time.sleep(3.0)
        report = run.generator.stop()
    result = _result(report, marks)
    charts = write_charts(report, marks, context.root / REPORT_DIR)
    result.notes.append("charts: " + ", ".join(str(p) for p in charts))
    return result


def write_charts(report: LoadReport, marks: dict[str, float], directory: Path) -> list[Path]:
    """The canary's timeline: answers by version, failures and p99 per version, each traffic
    step shaded."""
    phases = {
        f"{percent} %": (marks[f"traffic_{percent}:start"], marks[f"traffic_{percent}:done"])
        for percent in TRAFFIC
        if f"traffic_{percent}:start" in marks and f"traffic_{percent}:done" in marks
    }
    return [
        rollout_timeline(
            report,
            phases,
            chart_path(directory, "canary", "timeline"),
            "bench canary: answers by version under a 10 -> 50 -> 100 % weighted canary",
        )
    ]


def _result(report: LoadReport, marks: dict[str, float]) -> BenchResult:
    before = report.window(None, marks["rollout:start"])
    first = marks.get(f"traffic_{TRAFFIC[0]}:start", marks["rollout:start"])
    last = marks.get(f"traffic_{TRAFFIC[-1]}:done", marks["rollout:done"])
    during = report.window(first, last)
    stable_before = [s for s in before if s.ok and s.version in (None, 1) and s.value == 2.5]
    stable_during = [s for s in during if s.ok and s.value == 2.5]
    p99_before = report.latency_p(0.99, stable_before)
    p99_during = report.latency_p(0.99, stable_during)
    ratio = p99_during / p99_before if p99_before > 0 else float("inf")
    rows: list[tuple[str, str]] = [
        ("requests", f"{report.total} at {report.rate:.1f}/s ({report.stop_reason})"),
        ("failed requests", str(len(report.failures))),
        ("stable p99 before the canary (reference, same run)", format_ms(p99_before * 1000)),
        ("stable p99 during the canary", f"{format_ms(p99_during * 1000)} ({ratio:.2f}x)"),
    ]
    for name in ("verify", "canary_start", *(f"traffic_{p}" for p in TRAFFIC), "canary_stop"):
        if f"{name}:start" in marks and f"{name}:done" in marks:
            seconds = marks[f"{name}:done"] - marks[f"{name}:start"]
            rows.append((f"  step {name}", f"{seconds:.1f} s"))
    rows.append(("whole rollout", f"{marks['rollout:done'] - marks['rollout:start']:.1f} s"))
    met = not report.failures and ratio <= TARGET_STABLE_P99_RATIO
    return BenchResult(
        "canary",
        f"0 failed requests; stable p99 during the canary <= {TARGET_STABLE_P99_RATIO}x before",
        rows,
        met,
        ["each traffic step is one 8 s analysis window here (models[].slo.window_seconds)"],
    )
