"""``invoke bench soak`` (targets.md #17): minutes of steady load with hot reloads and a rollout.

The throw-away project of :mod:`tfstack.bench.rollout` (half_plus_two on free loopback ports) is
started, then loaded at a steady rate over REST and gRPC (unlabelled and via ``stable``) in
windows of :data:`WINDOW_S` seconds. In the middle of every window the server gets a hot reload
(its own models.config again, over gRPC: the full reload path, no change); in the middle window a
rollout to version 2 runs instead. After every window the server process's RSS, open file
descriptors and threads are read from ``/proc`` on this host (the engine is local). The figures:
failed requests (goal 0), RSS at start and end (goal: within 10 %), fds and threads at start and
end (goal: flat), and p99 per window. Bounded: ``--minutes`` (default 3, at most 30), loopback
only, the load generator's own caps per window.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.bench.loadgen import LoadReport, format_ms
from tfstack.bench.rollout import MODEL, RolloutScenario, write_candidates
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.build.images import ensure_image
from tfstack.docker.compose import COMPOSE_PROJECT_LABEL
from tfstack.docker.engine import ensure_engine
from tfstack.errors import StackError
from tfstack.render import MODELS_CONFIG
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollout
from tfstack.serving.client import GrpcClient

DEFAULT_MINUTES = 3.0
WINDOW_S = 30.0  # one hot reload per window: "a hot reload every 30 s"
RATE = 50.0  # requests per second, REST and gRPC together
RSS_TOLERANCE = 0.10
FLAT_SLACK = 4  # fds or threads a long-lived server may add (a new gRPC channel, a pool thread)
RELOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProcessFigures:
    """One reading of the server process: resident memory, open fds, threads."""

    rss_bytes: int
    fds: int
    threads: int


def read_process(pid: int, proc: Path = Path("/proc")) -> ProcessFigures:
    """RSS, fd count and thread count of ``pid`` from ``/proc`` (raises StackError if hidden)."""
    base = proc / str(pid)
    try:
        fields = dict(
            line.split(":", 1) for line in (base / "status").read_text().splitlines() if ":" in line
        )
        fds = len(os.listdir(base / "fd"))
    except OSError as exc:
        raise StackError(
            f"cannot read /proc/{pid} of the serving container: {exc}",
            service="serving",
            hint="run the soak as root on the engine's host (the server's /proc must be visible)",
        ) from exc
    rss_kb = int(fields["VmRSS"].split()[0])
    return ProcessFigures(rss_kb * 1024, fds, int(fields["Threads"].strip()))


@dataclass(frozen=True)
class Window:
    """One window of load: what happened in it and the process figures at its end."""

    index: int
    event: str  # "reload" or "rollout"
    report: LoadReport
    after: ProcessFigures
    event_s: float


def within(start: int, end: int, tolerance: float) -> bool:
    """Whether ``end`` stayed within ``tolerance`` (a fraction) of ``start``."""
    return abs(end - start) <= tolerance * start


def flat(start: int, end: int) -> bool:
    """No leak: at most :data:`FLAT_SLACK` more than at the start."""
    return end <= start + FLAT_SLACK


def _server_pid(client: Any, project: str) -> int:
    found = client.containers.list(filters={"label": f"{COMPOSE_PROJECT_LABEL}={project}"})
    if not found:
        raise StackError(f"no serving container of {project} runs", service="serving")
    return int(found[0].attrs["State"]["Pid"])


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@benchmark(
    "soak",
    "minutes of REST+gRPC load, a hot reload every 30 s, a rollout mid-way (targets.md #17)",
    default_runs=1,
)
def bench_soak(context: BenchContext) -> BenchResult:
    """Target #17: 0 failed, RSS flat within 10 %, fds and threads flat."""

    say = context.say
    minutes = context.minutes or DEFAULT_MINUTES
    windows_wanted = max(2, math.ceil(minutes * 60 / WINDOW_S))
    rollout_window = windows_wanted // 2
    client = ensure_engine(say=say)
    image = "tfstack/serving-runtime:latest"
    ensure_image(client, image, source_root=context.root, say=say)
    with tempfile.TemporaryDirectory(prefix="tfstack-soak-models-") as tmp:
        say("writing half_plus_two v1 and the v2 candidate with TensorFlow")
        candidates = write_candidates(Path(tmp))
        scenario = RolloutScenario(client, image, candidates)
        try:
            say(f"starting the stack {scenario.project} on {scenario.rest_url}")
            scenario.up()
            pid = _server_pid(client, scenario.project)
            say("warming up (10 s of load, not counted)")
            scenario.load(max_seconds=10, rate=RATE).wait()
            start = read_process(pid)
            windows: list[Window] = []
            for index in range(windows_wanted):
                event = "rollout" if index == rollout_window else "reload"
                generator = scenario.load(max_seconds=WINDOW_S, rate=RATE).start()
                time.sleep(WINDOW_S / 2)
                began = time.monotonic()
                if event == "rollout":
                    say(f"window {index + 1}/{windows_wanted}: rollout to version 2 under load")
                    run_rollout(
                        scenario.context(say),
                        RolloutRequest(MODEL, version=2, source=str(candidates["good"])),
                    )
                else:
                    say(f"window {index + 1}/{windows_wanted}: hot reload under load")
                    config = (scenario.root / MODELS_CONFIG).read_text(encoding="utf-8")
                    with GrpcClient(scenario.grpc_target, timeout=RELOAD_TIMEOUT_S) as grpc:
                        grpc.reload_config(config, timeout=RELOAD_TIMEOUT_S)
                took = time.monotonic() - began
                report = generator.wait()
                windows.append(Window(index, event, report, read_process(pid), took))
        finally:
            scenario.down()
    return _result(minutes, start, windows)


def _result(minutes: float, start: ProcessFigures, windows: list[Window]) -> BenchResult:
    end = windows[-1].after
    failures = [s for w in windows for s in w.report.failures]
    total = sum(w.report.total for w in windows)
    rows = [
        ("duration", f"{len(windows)} windows of {WINDOW_S:.0f} s ({minutes:g} min asked)"),
        ("requests", f"{total} at {RATE:.0f}/s, REST+gRPC, unlabelled and via stable"),
        ("failed requests", str(len(failures))),
        (
            "RSS start -> end",
            f"{_mb(start.rss_bytes)} -> {_mb(end.rss_bytes)} "
            f"({(end.rss_bytes / start.rss_bytes - 1) * 100:+.1f} %)",
        ),
        ("open fds start -> end", f"{start.fds} -> {end.fds}"),
        ("threads start -> end", f"{start.threads} -> {end.threads}"),
    ]
    for window in windows:
        rows.append(
            (
                f"  window {window.index + 1} ({window.event} {window.event_s:.1f} s)",
                f"p99 {format_ms(window.report.latency_p(0.99) * 1000)}, "
                f"{len(window.report.failures)} failed, RSS {_mb(window.after.rss_bytes)}, "
                f"fds {window.after.fds}, threads {window.after.threads}",
            )
        )
    notes = [
        "start figures are read after a 10 s warm-up (first requests allocate once)",
        "the rollout verifies version 2 in a side container; its figures are not the server's",
    ]
    notes += [f"failure: {s.target}: {s.error}" for s in failures[:5]]
    met = (
        not failures
        and within(start.rss_bytes, end.rss_bytes, RSS_TOLERANCE)
        and flat(start.fds, end.fds)
        and flat(start.threads, end.threads)
    )
    return BenchResult(
        name="soak",
        target="targets.md #17: 0 failed; RSS flat within 10 %; fds and threads flat",
        rows=rows,
        met=met,
        notes=notes,
    )
