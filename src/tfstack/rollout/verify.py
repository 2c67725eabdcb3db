"""Verifying a candidate version in a temporary side instance, before production ever sees it.

The side instance is a container of the serving image the stack runs (so "loads" means "loads in
production"), labelled ``org.tfstack.project=<project>`` and ``org.tfstack.role=verifier``, with the
model directory mounted read-only and a models.config serving only this model, pinned to
``specific [stable, candidate]`` (a :class:`~tfstack.docker.containers.ServingContainer`). Its
ports are published on 127.0.0.1 ephemeral ports. Then:

1. wait until both versions are AVAILABLE; a candidate that ends in an error (or a server that
   exits) fails with the server's own error text and log lines;
2. every sample of the spec runs against the candidate by version: it must answer, and match
   ``expect`` within ``tolerance`` where one is given;
3. latency of candidate vs stable, measured alternately in the same instance: the candidate's
   median may be at most ``factor`` x the stable median (differences under
   :data:`LATENCY_FLOOR_S` are noise and pass);
4. the container is removed, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from tfstack.core import textproto
from tfstack.core.labels import LABEL_MANAGED, LABEL_MODEL, LABEL_PROJECT, LABEL_ROLE
from tfstack.docker.containers import ServingContainer, ServingNotReady
from tfstack.errors import RolloutError, StackError
from tfstack.serving.client import (
    ModelRef,
    RestClient,
    ServingRequestError,
    matches_expected,
    summarize,
)
from tfstack.spec import SampleRequest, StackSpec

ROLE_VERIFIER = "verifier"
LATENCY_FLOOR_S = 0.005
LATENCY_ROUNDS = 15
WARMUP_ROUNDS = 3
READY_TIMEOUT_S = 180.0
VERIFIER_CPU_SHARES = 128

Say = Callable[[str], None]


@dataclass(frozen=True)
class SideInstancePlan:
    """Everything needed to run the side instance (pure data, printed by --dry-run)."""

    project: str
    model: str
    image: str
    host_model_dir: Path
    base_path: str
    stable: int
    candidate: int
    command: tuple[str, ...]
    user: str
    cpus: float | None = None
    memory: str | None = None

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted({self.stable, self.candidate}))

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_PROJECT: self.project,
            LABEL_MANAGED: "true",
            LABEL_ROLE: ROLE_VERIFIER,
            LABEL_MODEL: self.model,
        }

    def config_text(self) -> str:
        versions = " ".join(f"versions: {v}" for v in self.versions)
        return (
            "# tfstack side instance: verifies a candidate version; removed after the check\n"
            "model_config_list {\n"
            "  config {\n"
            f"    name: {textproto.quote(self.model)}\n"
            f"    base_path: {textproto.quote(self.base_path)}\n"
            '    model_platform: "tensorflow"\n'
            f"    model_version_policy {{ specific {{ {versions} }} }}\n"
            "  }\n"
            "}\n"
        )

    def describe(self) -> str:
        return (
            f"side instance of {self.image}: {self.model} versions "
            f"{', '.join(str(v) for v in self.versions)} from {self.host_model_dir} (read-only), "
            "ports on 127.0.0.1"
        )


def plan_side_instance(
    spec: StackSpec, host_model_dir: Path, model: str, *, stable: int, candidate: int
) -> SideInstancePlan:
    serving = spec.serving
    base_path = f"/models/{model}"
    # Ports and --model_config_file come from the ServingContainer; these follow them.
    command = (
        f"--file_system_poll_wait_seconds={serving.file_system_poll_seconds}",
        "--max_num_load_retries=0",
        f"--rest_api_timeout_in_ms={serving.rest_api_timeout_ms}",
        f"--tensorflow_intra_op_parallelism={serving.intra_op_threads}",
        f"--tensorflow_inter_op_parallelism={serving.inter_op_threads}",
        f"--enable_model_warmup={'true' if serving.enable_model_warmup else 'false'}",
    )
    return SideInstancePlan(
        project=spec.project,
        model=model,
        image=serving.image,
        host_model_dir=host_model_dir,
        base_path=base_path,
        stable=stable,
        candidate=candidate,
        command=command,
        user=serving.user,
        cpus=serving.resources.cpus,
        memory=serving.resources.memory,
    )


# --------------------------------------------------------------------------------------------
# Pure checks


@dataclass(frozen=True)
class LatencyVerdict:
    ok: bool
    stable_median_s: float
    candidate_median_s: float
    factor: float

    def describe(self) -> str:
        ratio = self.candidate_median_s / self.stable_median_s if self.stable_median_s > 0 else 0.0
        return (
            f"median latency candidate {self.candidate_median_s * 1000:.2f} ms vs stable "
            f"{self.stable_median_s * 1000:.2f} ms ({ratio:.2f}x; allowed {self.factor:g}x, "
            f"or +{LATENCY_FLOOR_S * 1000:.0f} ms)"
        )


def compare_latency(
    stable_s: Sequence[float],
    candidate_s: Sequence[float],
    factor: float,
    floor_s: float = LATENCY_FLOOR_S,
) -> LatencyVerdict:
    """Candidate median within ``factor`` x stable median (or within ``floor_s`` of it)."""
    stable = statistics.median(stable_s) if stable_s else 0.0
    candidate = statistics.median(candidate_s) if candidate_s else 0.0
    limit = max(stable * factor, stable + floor_s)
    return LatencyVerdict(candidate <= limit, stable, candidate, factor)


def sample_problem(sample: SampleRequest, answer: Any) -> str | None:
    """Why an answer does not match the sample's ``expect`` (None when fine or none given)."""
    if sample.expect is None or matches_expected(answer, sample.expect, sample.tolerance):
        return None
    return (
        f"sample {sample.name}: expected {summarize(sample.expect)} (tolerance "
        f"{sample.tolerance:g}), got {summarize(answer)}"
    )


def error_lines(log_lines: Sequence[str], limit: int = 12) -> list[str]:
    """The log lines that explain a failure (errors first), bounded."""
    keys = ("error", "failed", "fail", "invalid", "corrupt", "exception", "traceback")
    chosen = [line for line in log_lines if any(key in line.lower() for key in keys)]
    return (chosen or list(log_lines))[-limit:]


# --------------------------------------------------------------------------------------------
# The container


@dataclass
class VerifyReport:
    samples_checked: int = 0
    latency: LatencyVerdict | None = None
    ready_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def remove_verifiers(client: Any, project: str, model: str | None = None) -> list[str]:
    """Remove side instances left by an interrupted rollout; names removed."""
    selector = [f"{LABEL_PROJECT}={project}", f"{LABEL_ROLE}={ROLE_VERIFIER}"]
    if model is not None:
        selector.append(f"{LABEL_MODEL}={model}")
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": selector}):
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.name)
    return removed


def _memory_bytes(text: str) -> str:
    return text.lower().rstrip("b")


class SideInstance:
    """Runs a :class:`SideInstancePlan` as a :class:`ServingContainer`; ``with`` starts it, waits
    until both versions are AVAILABLE (RolloutError with the server's words otherwise) and removes
    it at the end, whatever happened."""

    def __init__(self, client: Any, plan: SideInstancePlan, *, say: Say = lambda text: None):
        self.client = client  # kept for callers; the container opens its own engine connection
        self.plan = plan
        self.say = say
        self.server: ServingContainer | None = None
        self.rest: RestClient | None = None
        self.ready_s = 0.0

    def __enter__(self) -> SideInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def container_for(self, timeout: float) -> ServingContainer:
        """The side instance's container, configured but not started."""
        plan = self.plan
        kwargs: dict[str, Any] = {}
        if plan.cpus is not None:
            kwargs["nano_cpus"] = int(plan.cpus * 1e9)
        if plan.memory is not None:
            kwargs["mem_limit"] = _memory_bytes(plan.memory)
        name = f"{plan.project}-verify-{plan.model}-{plan.candidate}-{os.getpid()}"
        server = ServingContainer(
            plan.image,
            models={plan.model: plan.host_model_dir},
            model_config=plan.config_text(),
            expected_versions={plan.model: plan.versions},
            flags=plan.command,
            labels=plan.labels,
            name=name[:120],
            startup_timeout=timeout,
            user=plan.user,
            # Low CPU weight: under contention the serving containers (weight 1024) win, so the
            # side instance's model load does not show in production latency.
            cpu_shares=VERIFIER_CPU_SHARES,
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            **kwargs,
        )
        server.with_tmpfs_mount("/tmp", "size=64m")  # docker tmpfs options, verbatim
        return server

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the container and wait until both versions are AVAILABLE."""
        self.server = self.container_for(timeout)
        self.say(f"side instance {self.server._name} starting ({self.plan.describe()})")
        try:
            self.server.start()
        except ServingNotReady as exc:
            self.server = None  # start() removed it
            failed = [f for f in exc.failures if f[1] == self.plan.candidate]
            if failed:
                message = (
                    f"version {self.plan.candidate} failed to load in the side instance: "
                    f"{failed[0][2]}"
                )
            else:
                message = (
                    f"version {self.plan.candidate} failed in the side instance: {exc.summary}"
                )
            raise self._fail(message, error_lines(exc.log_tail)) from exc
        except StackError as exc:
            self.server = None
            raise self._fail(f"the side instance did not start: {exc.message}", []) from exc
        except docker.errors.DockerException as exc:
            self.server = None
            raise self._fail(f"the engine refused the side instance: {exc}", []) from exc
        self.ready_s = self.server.ready_s
        self.rest = RestClient(self.server.rest_url, timeout=30)

    def remove(self) -> None:
        if self.rest is not None:
            self.rest.close()
            self.rest = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def log_tail(self, lines: int = 40) -> list[str]:
        return self.server.log_tail(lines) if self.server is not None else []

    def _fail(self, message: str, evidence: Sequence[str]) -> RolloutError:
        return RolloutError(
            message,
            model=self.plan.model,
            version=self.plan.candidate,
            step="verify",
            evidence=list(evidence),
            hint="the new version never reached the serving instance; fix the export and run "
            "the rollout again",
        )

    def run_samples(self, samples: Sequence[tuple[SampleRequest, Mapping[str, Any]]]) -> int:
        """Each sample against the candidate by version; RolloutError on an error or mismatch."""
        assert self.rest is not None
        problems: list[str] = []
        ref = ModelRef(self.plan.model, version=self.plan.candidate)
        for sample, body in samples:
            try:
                answer = self.rest.predict(
                    ref, body, method=sample.method, signature=sample.signature_name
                )
            except ServingRequestError as exc:
                problems.append(f"sample {sample.name}: {exc.message}")
                continue
            problem = sample_problem(sample, answer)
            if problem:
                problems.append(problem)
        if problems:
            raise self._fail(
                f"version {self.plan.candidate} answered the spec's samples wrongly", problems
            )
        return len(samples)

    def measure(
        self, samples: Sequence[tuple[SampleRequest, Mapping[str, Any]]], rounds: int
    ) -> tuple[list[float], list[float]]:
        """Alternating timings of stable and candidate (same requests, same instance)."""
        assert self.rest is not None
        refs = {
            "stable": ModelRef(self.plan.model, version=self.plan.stable),
            "candidate": ModelRef(self.plan.model, version=self.plan.candidate),
        }
        timings: dict[str, list[float]] = {"stable": [], "candidate": []}
        for index in range(WARMUP_ROUNDS + rounds):
            order = ("stable", "candidate") if index % 2 == 0 else ("candidate", "stable")
            for which in order:
                for sample, body in samples:
                    started = time.perf_counter()
                    self.rest.predict(
                        refs[which], body, method=sample.method, signature=sample.signature_name
                    )
                    if index >= WARMUP_ROUNDS:
                        timings[which].append(time.perf_counter() - started)
        return timings["stable"], timings["candidate"]


def verify_candidate(
    client: Any,
    plan: SideInstancePlan,
    samples: Sequence[tuple[SampleRequest, Mapping[str, Any]]],
    *,
    latency_factor: float,
    rounds: int = LATENCY_ROUNDS,
    say: Say = lambda text: None,
) -> VerifyReport:
    """Run the side instance and every check; the container is removed in all cases."""
    report = VerifyReport()
    remove_verifiers(client, plan.project, plan.model)
    with SideInstance(client, plan, say=say) as side:
        report.ready_s = side.ready_s
        say(f"side instance: versions {list(plan.versions)} AVAILABLE in {report.ready_s:.1f}s")
        if not samples:
            report.notes.append("the spec has no samples for this model: only loading was checked")
            return report
        report.samples_checked = side.run_samples(samples)
        say(f"side instance: {report.samples_checked} sample(s) answered as expected")
        if plan.stable != plan.candidate:
            try:
                stable_t, candidate_t = side.measure(samples, rounds)
            except ServingRequestError as exc:
                raise side._fail("a latency probe failed", [exc.message]) from exc
            verdict = compare_latency(stable_t, candidate_t, latency_factor)
            report.latency = verdict
            if not verdict.ok:
                raise side._fail(f"version {plan.candidate} is too slow", [verdict.describe()])
            say(f"side instance: {verdict.describe()}")
    return report
