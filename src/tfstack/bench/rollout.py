"""``invoke bench rollout`` (targets.md #6) and the throw-away project it and the tests use.

:class:`RolloutScenario` is a temporary project on free loopback ports: ``config/stack.yaml``
(half_plus_two, ``latest: 1``, ``stable: 1``), version 1 (y = 0.5x + 2) written with TensorFlow,
and candidates outside the model directory: ``good`` (y = 0.5x + 3), ``corrupt`` (its variables
overwritten) and ``incompatible`` (a different serving signature). Responses carry no version, so
the math tells the versions apart: x = 1 answers 2.5 from version 1 and 3.5 from version 2.

The benchmark starts that stack, measures steady load, rolls out version 2 and rolls it back under
the bounded load generator (50 req/s, REST and gRPC, unlabelled and via ``stable``) and prints
failed requests, p99 during vs steady, time to promote and time to roll back.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfstack.bench.loadgen import LoadGenerator, LoadReport, format_ms, stack_senders
from tfstack.bench.report import REPORT_DIR, chart_path, latency_distribution, rollout_timeline
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.build.images import ensure_image
from tfstack.docker.engine import ensure_engine
from tfstack.models.demo import write_half_plus
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollback, run_rollout
from tfstack.rollout.runner import Context
from tfstack.stack.lifecycle import Lifecycle

MODEL = "half_plus_two"
BODY = {"instances": [1.0]}
V1_VALUE = 2.5  # 0.5 * 1 + 2
V2_VALUE = 3.5  # 0.5 * 1 + 3
TARGET_ROLLOUT_S = 10.0
TARGET_ROLLBACK_S = 5.0

SPEC_TEMPLATE = """\
# Throw-away rollout project (tfstack.bench.rollout); removed when done.
format: 1
project: {project}
model_repository: ../models
models:
  - name: {model}
    policy:
      latest: 1                # pinned by the first rollout
    labels:
      stable: 1                # clients that care ask for this label
    samples:
      - name: predict
        body: {{"instances": [1.0, 2.0, 5.0]}}
serving:
  image: {image}
  grpc_port: {grpc_port}
  rest_port: {rest_port}
  max_load_retries: 0
  healthcheck: {healthcheck}
monitoring:
  enabled: false
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _open_up(path: Path) -> None:
    """The server runs as uid 1000: every directory and file must be readable by it."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


def write_candidates(base: Path) -> dict[str, Path]:
    """Version 1 and the candidates (see the module docstring), written once with TensorFlow."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    paths = {name: base / name for name in ("v1", "good", "corrupt", "incompatible")}
    write_half_plus(paths["v1"], offset=2.0, offset2=3.0, model_name=MODEL)
    write_half_plus(paths["good"], offset=3.0, offset2=4.0, model_name=MODEL)
    shutil.copytree(paths["good"], paths["corrupt"])
    for shard in (paths["corrupt"] / "variables").glob("variables.data-*"):
        size = shard.stat().st_size
        shard.write_bytes(bytes((7 * i + 3) % 256 for i in range(max(size, 8))))
    module = tf.Module()

    def serve(z: Any) -> dict[str, Any]:
        return {"y": tf.cast(z, tf.float32) * 0.5 + 3.0}

    function = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.int64, name="z")])
    tf.saved_model.save(
        module, str(paths["incompatible"]), signatures={"serving_default": function}
    )
    for path in paths.values():
        _open_up(path)
    return paths


@dataclass
class RolloutScenario:
    """A temp project serving half_plus_two v1 on free ports (see the module docstring)."""

    client: Any
    image: str
    candidates: dict[str, Path]
    healthcheck: bool = True
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tfstack-rollout-")))
    project: str = field(default_factory=lambda: f"tfstack-ro-{secrets.token_hex(4)}")
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.root.chmod(0o755)
        (self.root / "config").mkdir(mode=0o755, exist_ok=True)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.model_dir.chmod(0o755)
        (self.root / "models").chmod(0o755)
        shutil.copytree(self.candidates["v1"], self.model_dir / "1")
        self.spec_path.write_text(self.spec_text(), encoding="utf-8")

    def spec_text(self, template: str = SPEC_TEMPLATE, **extra: Any) -> str:
        """The project's spec: ``template`` filled with its ports, image and ``extra``."""
        return template.format(
            project=self.project,
            model=MODEL,
            image=self.image,
            grpc_port=self.grpc_port,
            rest_port=self.rest_port,
            healthcheck="true" if self.healthcheck else "false",
            **extra,
        )

    @property
    def spec_path(self) -> Path:
        return self.root / "config" / "stack.yaml"

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / MODEL

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def lifecycle(self) -> Any:
        return Lifecycle(self.spec_path, root=self.root, client=self.client)

    def up(self) -> None:
        self.lifecycle().up(timeout=150)

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self.lifecycle().down(volumes=True)
        selector = {"label": f"org.tfstack.project={self.project}"}
        for container in self.client.containers.list(all=True, filters=selector):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def context(self, say: Callable[[str], None] = lambda text: None) -> Any:
        return Context(self.spec_path, self.root, MODEL, client=self.client, say=say)

    def load(self, *, max_seconds: float = 90.0, rate: float = 50.0) -> LoadGenerator:
        senders = stack_senders(
            MODEL, rest_url=self.rest_url, grpc_target=self.grpc_target, body=BODY
        )
        return LoadGenerator(senders, rate=rate, max_seconds=max_seconds)


# --------------------------------------------------------------------------------------------
# The benchmark


@benchmark(
    "rollout",
    "rollout v1 -> v2 and rollback under 50 req/s REST+gRPC load (targets.md #6)",
    default_runs=1,
)
def bench_rollout(context: BenchContext) -> BenchResult:
    """Target #6: 0 failed requests, p99 during <= 2x steady, rollout <= 10 s after the files
    land, rollback <= 5 s."""

    say = context.say
    with scenario_run(
        context, write=write_candidates, make=RolloutScenario, load=lambda s: s.load(max_seconds=90)
    ) as run:
        marks = run.marks
        marks["rollout:start"] = time.monotonic()
        say("rolling out version 2 under load")
        run_rollout(
            run.scenario.context(say),
            RolloutRequest(MODEL, version=2, source=str(run.candidates["good"])),
            on_step=run.mark,
        )
        marks["rollout:done"] = time.monotonic()
        time.sleep(3.0)
        marks["rollback_cmd:start"] = time.monotonic()
        say("rolling back under load")
        run_rollback(run.scenario.context(say), on_step=run.mark)
        marks["rollback_cmd:done"] = time.monotonic()
        time.sleep(3.0)
        report = run.generator.stop()
    result = _result(report, marks)
    charts = write_charts(report, marks, context.root / REPORT_DIR)
    result.notes.append("charts: " + ", ".join(str(p) for p in charts))
    return result


@dataclass
class ScenarioRun:
    """A scenario stack under load, its candidates and the step marks of what runs on it."""

    scenario: RolloutScenario
    candidates: dict[str, Path]
    generator: LoadGenerator
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, event: str, at: float) -> None:
        """``apply``'s ``on_step``: ``<step>:start`` / ``<step>:done`` monotonic times."""
        self.marks[f"{name}:{event}"] = at


@contextlib.contextmanager
def scenario_run(
    context: BenchContext,
    *,
    write: Callable[[Path], dict[str, Path]],
    make: Callable[[Any, str, dict[str, Path]], RolloutScenario],
    load: Callable[[RolloutScenario], LoadGenerator],
    warmup_s: float = 12.0,
) -> Iterator[ScenarioRun]:
    """Candidates written, the stack started, ``warmup_s`` of steady load measured; everything
    removed afterwards (the load stopped if the body did not stop it)."""
    say = context.say
    client = ensure_engine(say=say)
    image = "tfstack/serving-runtime:latest"
    ensure_image(client, image, source_root=context.root, say=say)
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-models-") as tmp:
        say("writing half_plus_two v1 and the candidates with TensorFlow")
        candidates = write(Path(tmp))
        scenario = make(client, image, candidates)
        generator: LoadGenerator | None = None
        try:
            say(f"starting the stack {scenario.project} on {scenario.rest_url}")
            scenario.up()
            generator = load(scenario).start()
            time.sleep(warmup_s)
            yield ScenarioRun(scenario, candidates, generator)
        finally:
            if generator is not None:
                generator.stop()
            scenario.down()


def write_charts(report: LoadReport, marks: dict[str, float], directory: Path) -> list[Path]:
    """The rollout's timeline (answers by version, failures, p99 per version; phases shaded) and
    its latency distribution per version, as PNGs in ``directory``."""
    spans = {
        "verify": ("verify:start", "verify:done"),
        "load + promote": ("load:start", "promote:done"),
        "rollback": ("rollback_cmd:start", "rollback_cmd:done"),
    }
    phases = {
        name: (marks[begin], marks[end])
        for name, (begin, end) in spans.items()
        if begin in marks and end in marks
    }
    versions = sorted({s.version for s in report.samples if s.ok and s.version is not None})
    by_version = {
        f"v{v}": [s.latency_s for s in report.samples if s.ok and s.version == v] for v in versions
    }
    return [
        rollout_timeline(
            report,
            phases,
            chart_path(directory, "rollout", "timeline"),
            "bench rollout: answers by version, failures and p99 under load",
        ),
        latency_distribution(
            by_version,
            chart_path(directory, "rollout", "latency"),
            "bench rollout: latency by answering version",
        ),
    ]


def _result(report: LoadReport, marks: dict[str, float]) -> BenchResult:
    steady = report.window(None, marks["rollout:start"])
    during = report.window(marks["rollout:start"], marks["rollback_cmd:done"])
    steady_p99 = report.latency_p(0.99, steady)
    during_p99 = report.latency_p(0.99, during)
    files_landed = marks.get("stage:done", marks["rollout:start"])
    promote = marks.get("promote:done", marks["rollout:done"]) - files_landed
    total_rollout = marks["rollout:done"] - marks["rollout:start"]
    rollback = marks["rollback_cmd:done"] - marks["rollback_cmd:start"]
    rollback_step = marks["rollback:done"] - marks["rollback:start"]
    failed = len(report.failures)
    ratio = during_p99 / steady_p99 if steady_p99 > 0 else float("inf")
    verify_p99 = report.latency_p(
        0.99, report.window(marks.get("verify:start"), marks.get("verify:done"))
    )
    switch_p99 = report.latency_p(
        0.99, report.window(marks.get("load:start"), marks.get("promote:done"))
    )
    rows = [
        ("requests", f"{report.total} at {report.rate:.1f}/s ({report.stop_reason})"),
        ("failed requests", str(failed)),
        ("p99 steady (reference, same run)", format_ms(steady_p99 * 1000)),
        ("p99 during rollout + rollback", f"{format_ms(during_p99 * 1000)} ({ratio:.2f}x steady)"),
        ("  p99 while the side instance verifies", format_ms(verify_p99 * 1000)),
        ("  p99 while loading and promoting", format_ms(switch_p99 * 1000)),
        ("files landed -> stable on v2", f"{promote:.2f} s (verify + load + promote)"),
        ("whole rollout (pin, stage, verify, load, promote)", f"{total_rollout:.2f} s"),
        ("rollback (command start -> done)", f"{rollback:.2f} s"),
        ("rollback reload step alone", f"{rollback_step:.2f} s"),
    ]
    notes = [
        "the side-instance verification (container start + model load) dominates the rollout",
        "a fresh `invoke rollback` process also pays ~3 s importing TensorFlow's protos for the "
        "gRPC reload call (not counted here: the benchmark process has them loaded)",
    ]
    if failed:
        notes += [f"failure: {s.target}: {s.error}" for s in report.failures[:5]]
    met = (
        failed == 0
        and ratio <= 2.0
        and promote <= TARGET_ROLLOUT_S
        and rollback <= TARGET_ROLLBACK_S
    )
    return BenchResult(
        name="rollout",
        target="targets.md #6: 0 failed, p99 during <= 2x steady, rollout <= 10 s after the "
        "files land, rollback <= 5 s",
        rows=rows,
        met=met,
        notes=notes,
    )
