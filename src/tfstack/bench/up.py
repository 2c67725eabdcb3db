"""``invoke bench up``: targets.md #4, `invoke up` of the demo stack with images present.

Measured on a copy of the demo spec (same models, samples and server settings) in a temporary
project on free ports, so a demo stack already running on 8500/8501 is not disturbed:

1. a first ``invoke up`` in a fresh interpreter (as a user runs it) until every declared model is
   AVAILABLE and answered its smoke requests;
2. a second ``invoke up`` with nothing changed (must restart nothing);
3. the reference, in the same run: ``docker compose up`` of the same rendered file alone, polling
   the REST API until every model is AVAILABLE (what the engine and server need without tfstack).

Everything is torn down at the end (``down``, label sweep), even on failure.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.build.images import ensure_image
from tfstack.docker.compose import ComposeProject, Stack, remove_labelled
from tfstack.docker.engine import docker_client, ensure_engine
from tfstack.errors import StackError
from tfstack.models.demo import write_demo_models
from tfstack.serving.client import RestClient
from tfstack.serving.endpoints import endpoints_for
from tfstack.serving.waiting import ModelsReady, Poll
from tfstack.spec import load_spec
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.plan import load

UP_TARGET_S = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_bench_project(root: Path, source_root: Path) -> Path:
    """The demo spec on free ports with the checkout's model repository; returns its path."""
    source_spec = source_root / "config" / "stack.yaml"
    data = yaml.safe_load(source_spec.read_text(encoding="utf-8"))
    data["project"] = f"tfstack-bench-up-{root.name[-8:].lower().replace('_', '-')}"
    data["model_repository"] = str((source_root / "models").resolve())
    data.setdefault("serving", {})
    data["serving"]["rest_port"] = _free_port()
    data["serving"]["grpc_port"] = _free_port()
    config = root / "config"
    config.mkdir(parents=True)
    samples = source_root / "config" / "samples"
    if samples.is_dir():
        shutil.copytree(samples, config / "samples")
    spec_path = config / "stack.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec_path


def _timed_up(spec_path: Path, context: BenchContext) -> float:
    """Wall time of `invoke up --spec ...` in a fresh interpreter (exit 0 required)."""
    argv = [sys.executable, "-m", "invoke", "up", "--spec", str(spec_path)]
    started = time.perf_counter()
    result = subprocess.run(
        argv, cwd=context.root, capture_output=True, text=True, check=False, timeout=600
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise StackError("`invoke up` failed during the benchmark", log_tail=tail)
    context.say(f"invoke up: {wall:.1f} s ({result.stdout.strip().splitlines()[-1]})")
    return wall


def _reference(spec_path: Path) -> float:
    """Compose alone: `docker compose up -d` until every declared model is AVAILABLE (REST)."""

    loaded = load(spec_path)
    client = docker_client()
    stack = Stack(ComposeProject.for_root(loaded.spec.project, loaded.root), client)
    try:
        with RestClient(endpoints_for(loaded.spec).rest_url, timeout=10) as rest:
            started = time.perf_counter()
            stack.up()
            ModelsReady(rest, loaded.expectations, Poll(timeout=300, interval=0.1)).wait()
            return time.perf_counter() - started
    finally:
        client.close()


@benchmark(
    "up",
    "`invoke up` of the demo stack (images present) and a no-change second up (targets.md #4)",
    default_runs=1,
)
def bench_up(context: BenchContext) -> BenchResult:
    """Target #4: `invoke up` (images present) -> every demo model answering in <= 10 s."""

    runs = context.runs or 1
    client = ensure_engine(say=context.say)
    context.say("making sure the demo models and the serving image exist (not timed)")
    write_demo_models(context.root / "models", say=context.say)
    demo = load_spec(context.root / "config" / "stack.yaml", check_disk=True)
    ensure_image(client, demo.serving.image, source_root=context.root, say=context.say)
    firsts: list[float] = []
    seconds: list[float] = []
    references: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-up-") as tmp:
        spec_path = write_bench_project(Path(tmp), context.root)
        project = load_spec(spec_path, check_disk=True).project
        lifecycle = Lifecycle(spec_path, source_root=context.root, client=client)
        try:
            for run in range(runs):
                context.say(f"run {run + 1}/{runs}: first up")
                firsts.append(_timed_up(spec_path, context))
                context.say(f"run {run + 1}/{runs}: second up, nothing changed")
                seconds.append(_timed_up(spec_path, context))
                lifecycle.down()
                context.say(f"run {run + 1}/{runs}: reference, docker compose up alone")
                references.append(_reference(spec_path))
                lifecycle.down()
        finally:
            lifecycle.down(volumes=True)
            remove_labelled(client, project, volumes=True)
    first = statistics.median(firsts)
    second = statistics.median(seconds)
    reference = statistics.median(references)
    models = ", ".join(m.name for m in demo.models)
    rows = [
        ("first `invoke up` (fresh process), median", f"{first:.1f} s ({runs} runs)"),
        ("second `invoke up`, nothing changed", f"{second:.1f} s"),
        ("reference: docker compose up until AVAILABLE", f"{reference:.1f} s"),
        ("ratio first up / reference", f"{first / reference:.2f}x" if reference else "n/a"),
        ("target", f"<= {UP_TARGET_S:.0f} s; first up is {first / UP_TARGET_S:.2f}x the target"),
        ("models", models),
    ]
    return BenchResult(
        name="up",
        target="targets.md #4: `invoke up` (images present) -> every model answering <= 10 s",
        rows=rows,
        met=first <= UP_TARGET_S,
        notes=[
            "first up includes validation, render, plan, compose up, the wait and smoke requests",
            "absolute times drift between machines; compare with the reference from the same run",
        ],
    )
