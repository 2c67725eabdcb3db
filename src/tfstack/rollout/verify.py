"""Verifying a candidate version in a temporary side instance, before production ever sees it.

The side instance is a container of the serving image the stack runs (so "loads" means "loads in
production"), labelled ``org.tfstack.project=<project>`` and ``org.tfstack.role=verifier``, with the
model directory mounted read-only and a models.config serving only this model, pinned to
``specific [stable, candidate]``. Its ports are published on 127.0.0.1 ephemeral ports. Then:

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
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tfstack.core import textproto
from tfstack.docker.compose import LABEL_MANAGED, LABEL_PROJECT
from tfstack.errors import RolloutError, StackError
from tfstack.serving.client import (
    ModelRef,
    RestClient,
    ServingRequestError,
    VersionState,
    matches_expected,
    summarize,
)
from tfstack.serving.waiting import Poll
from tfstack.spec import SampleRequest, StackSpec

LABEL_ROLE = "org.tfstack.role"
LABEL_MODEL = "org.tfstack.model"
ROLE_VERIFIER = "verifier"
CONFIG_MOUNT = "/tfstack-verify"
GRPC_PORT = 8500
REST_PORT = 8501
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
    command = (
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={CONFIG_MOUNT}/models.config",
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
    """Runs a :class:`SideInstancePlan` with the docker SDK; ``with`` removes it at the end."""

    def __init__(self, client: Any, plan: SideInstancePlan, *, say: Say = lambda text: None):
        self.client = client
        self.plan = plan
        self.say = say
        self.container: Any = None
        self.config_dir: Path | None = None
        self.rest: RestClient | None = None

    def __enter__(self) -> SideInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def start(self) -> None:
        plan = self.plan
        self.config_dir = Path(tempfile.mkdtemp(prefix="tfstack-verify-"))
        os.chmod(self.config_dir, 0o755)
        config = self.config_dir / "models.config"
        config.write_text(plan.config_text(), encoding="utf-8")
        os.chmod(config, 0o644)
        kwargs: dict[str, Any] = {}
        if plan.cpus is not None:
            kwargs["nano_cpus"] = int(plan.cpus * 1e9)
        if plan.memory is not None:
            kwargs["mem_limit"] = _memory_bytes(plan.memory)
        name = f"{plan.project}-verify-{plan.model}-{plan.candidate}-{os.getpid()}"
        self.container = self.client.containers.run(
            plan.image,
            command=list(plan.command),
            name=name[:120],
            detach=True,
            user=plan.user,
            labels=plan.labels,
            ports={
                f"{GRPC_PORT}/tcp": ("127.0.0.1", None),
                f"{REST_PORT}/tcp": ("127.0.0.1", None),
            },
            volumes={
                str(plan.host_model_dir): {"bind": plan.base_path, "mode": "ro"},
                str(self.config_dir): {"bind": CONFIG_MOUNT, "mode": "ro"},
            },
            tmpfs={"/tmp": "size=64m"},
            # Low CPU weight: under contention the serving containers (weight 1024) win, so the
            # side instance's model load does not show in production latency.
            cpu_shares=VERIFIER_CPU_SHARES,
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            **kwargs,
        )
        self.say(f"side instance {name} started ({plan.describe()})")

    def remove(self) -> None:
        if self.rest is not None:
            self.rest.close()
            self.rest = None
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None
        if self.config_dir is not None:
            shutil.rmtree(self.config_dir, ignore_errors=True)
            self.config_dir = None

    def log_tail(self, lines: int = 40) -> list[str]:
        if self.container is None:
            return []
        try:
            raw = self.container.logs(tail=lines)
        except Exception as exc:
            return [f"(logs unavailable: {exc})"]
        return [line for line in raw.decode(errors="replace").splitlines() if line.strip()]

    def rest_url(self) -> str | None:
        self.container.reload()
        bindings = (self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(
            f"{REST_PORT}/tcp"
        )
        if not bindings:
            return None
        return f"http://127.0.0.1:{bindings[0]['HostPort']}"

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

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until both versions are AVAILABLE; RolloutError with the server's words."""
        started = time.monotonic()
        plan = self.plan

        def probe() -> list[VersionState] | None:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                code = self.container.attrs.get("State", {}).get("ExitCode")
                raise self._fail(
                    f"version {plan.candidate} failed in the side instance: the server exited "
                    f"with code {code} while loading",
                    error_lines(self.log_tail()),
                )
            if self.rest is None:
                url = self.rest_url()
                if url is None:
                    return None
                self.rest = RestClient(url, timeout=5)
            try:
                return self.rest.model_status(ModelRef(plan.model), timeout=5)
            except ServingRequestError:
                return None

        def done(states: list[VersionState] | None) -> bool:
            if not states:
                return False
            by_version = {s.version: s for s in states}
            candidate = by_version.get(plan.candidate)
            if candidate is not None and candidate.failed:
                raise self._fail(
                    f"version {plan.candidate} failed to load in the side instance: "
                    f"{candidate.error_code}: {candidate.error_message}",
                    error_lines(self.log_tail()),
                )
            return all(v in by_version and by_version[v].available for v in plan.versions)

        def on_timeout(
            last: list[VersionState] | None, error: BaseException | None, waited: float
        ) -> StackError:
            seen = ", ".join(f"v{s.version} {s.state}" for s in last or []) or "no answer"
            return StackError(
                f"versions {list(plan.versions)} not AVAILABLE in the side instance after "
                f"{waited:.0f}s (last seen: {seen})"
            )

        poll: Poll[list[VersionState] | None] = Poll(
            timeout=timeout,
            interval=0.25,
            transient=(requests.ConnectionError, requests.Timeout),
        )
        try:
            poll.until(probe, done, on_timeout=on_timeout)
        except RolloutError:
            raise
        except StackError as exc:
            raise self._fail(exc.message, self.log_tail(15)) from exc
        return time.monotonic() - started

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
        report.ready_s = side.wait_ready()
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
