"""``invoke bench frontdoor``: targets.md #11 (the door's overhead) and #12 (2 replicas vs 1).

One temporary project (the demo spec's models on free ports), brought up three times with
``Lifecycle.up`` and measured with the serve bench's load client (a separate asyncio process;
REST over keep-alive connections, gRPC over one HTTP/2 channel; half_plus_two, 127.0.0.1 only,
bounded), REST and gRPC alike:

1. one replica, no door: the server's published ports (the reference, measured in the same run);
2. one replica behind the door (``frontend.enabled: true``): the door's ports;
3. two replicas behind the door.

Where each process runs is set per phase (:data:`LAYOUTS`, ``docker update --cpuset-cpus``, the
client with ``taskset``), so the phases compare like with like on a 2-core machine: the replica
has core 0 to itself in phases 1 and 2 while the client (and the door) use core 1; in phase 3 each
replica has its own core and the client and the door run wherever there is room. The door runs one
HAProxy thread in both door phases.

Per phase and transport: sequential p50 (one client, one connection) and closed-loop throughput;
the door's and the replicas' CPU per request (the engine's counters) and the client's (its own).
#11: added p50 and door/direct throughput with one replica; #12: door throughput with 2 replicas /
with 1 as asked (replicas pinned, whole cores) and, as a diagnostic beside it, with each replica
capped at :data:`CAPPED_CPUS` of its core (the replicas then limit the figure, not the client and
the door that share their cores); and #12's ceiling on this machine: 2 cores over the CPU one
request costs through the door (replica + door + client), against one replica's throughput.
Everything is torn down at the end (``down``, label sweep), even on failure. Charts (latency
distributions, throughput over time) are written to ``state/bench/frontdoor-*.png``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfstack.bench.loadgen import format_ms
from tfstack.bench.report import (
    REPORT_DIR,
    chart_path,
    latency_distribution,
    load_latencies,
    load_rates,
    load_span,
    rates_over_time,
)
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.bench.serve_load import LoadResult, LoadSpec, run_load
from tfstack.bench.serve_reference import SMALL_BODY, grpc_predict_bytes
from tfstack.bench.up import write_bench_project
from tfstack.build.frontend import ensure_frontend_image
from tfstack.build.images import ensure_image
from tfstack.core.labels import LABEL_PROJECT
from tfstack.docker.compose import remove_labelled
from tfstack.docker.engine import ensure_engine
from tfstack.errors import StackError
from tfstack.models.demo import write_demo_models
from tfstack.spec import load_spec
from tfstack.stack.lifecycle import Lifecycle

ADDED_P50_TARGET_MS = 0.3
THROUGHPUT_RATIO_TARGET = 0.9
SCALE_TARGET = 1.6
CLIENT_BOUND_CORES = 0.9
"""A load client using more than this many cores may be what limits a throughput figure."""
REST_CONNECTIONS = 16
GRPC_CONCURRENCY = 32
SEQUENTIAL_REQUESTS = 1500
WINDOW_S = 8.0
CAPPED_CPUS = 0.5
DOOR_THREADS = 1
TRANSPORTS = ("rest", "grpc")
PATH = "/v1/models/half_plus_two:predict"
GRPC_BODY = grpc_predict_bytes("half_plus_two", "x", [1.0, 2.0, 5.0], "float32")
COMPOSE_SERVICE = "com.docker.compose.service"


@dataclass(frozen=True)
class Layout:
    """Which CPUs a phase's processes may use (``None``: any)."""

    replicas: tuple[str, ...]
    door: str | None
    client: str | None

    def describe(self) -> str:
        replicas = ", ".join(f"replica {i + 1} on CPU {c}" for i, c in enumerate(self.replicas))
        door = "" if self.door is None else f", door on CPU {self.door}"
        client = "client anywhere" if self.client is None else f"client on CPU {self.client}"
        return f"{replicas}{door}, {client}" + (", door anywhere" if self.door is None else "")


LAYOUTS: dict[str, Layout] = {
    "direct, 1 replica": Layout(("0",), None, "1"),
    "door, 1 replica": Layout(("0",), "1", "1"),
    "door, 2 replicas": Layout(("0", "1"), None, None),
}
"""Phase name -> where its processes run. The direct phase has no door."""


@dataclass(frozen=True)
class Phase:
    """Figures of one configuration, per transport: sequential latency and closed-loop
    throughput; the door's and the replicas' CPU per loaded request (µs, the engine's counters);
    REST throughput with capped replicas."""

    name: str
    sequential: Mapping[str, LoadResult]
    loaded: Mapping[str, LoadResult]
    door_us: Mapping[str, float] = field(default_factory=dict)
    capped: LoadResult | None = None
    replica_us: Mapping[str, float] = field(default_factory=dict)

    def client_us(self, transport: str) -> float:
        """The load client's CPU per loaded request (µs; measured over the window)."""
        run = self.loaded[transport]
        answered = run.requests + run.errors
        return run.client_cpu * run.seconds * 1e6 / answered if answered else math.nan

    def p50(self, transport: str) -> float:
        return self.sequential[transport].percentile(0.50)

    def rps(self, transport: str) -> float:
        return self.loaded[transport].rps

    @property
    def errors(self) -> int:
        runs = [*self.sequential.values(), *self.loaded.values()]
        runs += [self.capped] if self.capped is not None else []
        return sum(run.errors for run in runs)

    @property
    def client_cpu(self) -> float:
        """The most cores the load client used in one of the phase's loaded runs."""
        return max((run.client_cpu for run in self.loaded.values()), default=0.0)


def phase_spec(data: dict[str, Any], *, replicas: int, door: bool) -> dict[str, Any]:
    """The bench spec for one phase (pure): replica count, the door forced on or off, and one
    HAProxy thread (the door shares 2 cores with the replicas and the client)."""
    changed = {**data, "serving": {**data.get("serving", {}), "replicas": replicas}}
    changed["frontend"] = {**data.get("frontend", {}), "enabled": door}
    if door:
        changed["frontend"]["threads"] = DOOR_THREADS
    return changed


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class Verdict:
    """The #11/#12 figures computed from three phases (pure)."""

    added_ms: dict[str, float]
    door_ratio: dict[str, float]
    scale: dict[str, float]
    capped_scale: float | None
    errors: int
    client_bound: bool
    ceiling: dict[str, float]
    """#12's bound on this machine: CPUs / (replica + door + client CPU per request), over the
    throughput of one replica through the door (NaN without the CPU figures)."""

    @property
    def met(self) -> bool:
        return (
            all(added <= ADDED_P50_TARGET_MS for added in self.added_ms.values())
            and all(ratio >= THROUGHPUT_RATIO_TARGET for ratio in self.door_ratio.values())
            and all(scale >= SCALE_TARGET for scale in self.scale.values())
            and self.errors == 0
        )


def verdict(direct: Phase, door1: Phase, door2: Phase) -> Verdict:
    capped = (
        _ratio(door2.capped.rps, door1.capped.rps)
        if door1.capped is not None and door2.capped is not None
        else None
    )
    return Verdict(
        added_ms={t: door1.p50(t) - direct.p50(t) for t in TRANSPORTS},
        door_ratio={t: _ratio(door1.rps(t), direct.rps(t)) for t in TRANSPORTS},
        scale={t: _ratio(door2.rps(t), door1.rps(t)) for t in TRANSPORTS},
        capped_scale=capped,
        errors=direct.errors + door1.errors + door2.errors,
        client_bound=any(p.client_cpu > CLIENT_BOUND_CORES for p in (direct, door1, door2)),
        ceiling={
            t: _ceiling(door1, t, len(LAYOUTS["door, 2 replicas"].replicas)) for t in TRANSPORTS
        },
    )


def _cost_us(phase: Phase, transport: str) -> float:
    """CPU per request through the door (µs): replica + door + load client."""
    return (
        phase.replica_us.get(transport, math.nan)
        + phase.door_us.get(transport, math.nan)
        + phase.client_us(transport)
    )


def _ceiling(door1: Phase, transport: str, cpus: int) -> float:
    cost = _cost_us(door1, transport)
    if math.isnan(cost) or cost <= 0 or not door1.rps(transport):
        return math.nan
    return cpus * 1e6 / cost / door1.rps(transport)


def _judged(value: str, ok: bool) -> str:
    return f"{value} -> {'met' if ok else 'MISSED'}"


def frontdoor_rows(direct: Phase, door1: Phase, door2: Phase) -> tuple[list[tuple[str, str]], bool]:
    """The report's rows and whether #11 and #12 are met (pure)."""
    v = verdict(direct, door1, door2)
    rows: list[tuple[str, str]] = []
    for t in TRANSPORTS:
        name = t.upper() if t == "rest" else "gRPC"
        rows += [
            (
                f"{name} p50, one client: direct / door",
                f"{format_ms(direct.p50(t), 3)} / {format_ms(door1.p50(t), 3)}",
            ),
            (
                f"#11 {name} added p50 through the door",
                _judged(
                    f"{v.added_ms[t]:.3f} ms (target <= {ADDED_P50_TARGET_MS} ms)",
                    v.added_ms[t] <= ADDED_P50_TARGET_MS,
                ),
            ),
            (
                f"{name} throughput: direct / door, 1 replica",
                f"{direct.rps(t):,.0f} / {door1.rps(t):,.0f} req/s",
            ),
            (
                f"#11 {name} throughput door / direct",
                _judged(
                    f"{v.door_ratio[t]:.2f}x (target >= {THROUGHPUT_RATIO_TARGET})",
                    v.door_ratio[t] >= THROUGHPUT_RATIO_TARGET,
                ),
            ),
            (f"{name} throughput: door, 2 replicas", f"{door2.rps(t):,.0f} req/s"),
            (
                f"#12 {name} throughput 2 replicas / 1 (pinned)",
                _judged(
                    f"{v.scale[t]:.2f}x (target >= {SCALE_TARGET})", v.scale[t] >= SCALE_TARGET
                ),
            ),
            (
                f"door CPU per {name} request (1 / 2 replicas)",
                f"{door1.door_us.get(t, math.nan):.0f} / {door2.door_us.get(t, math.nan):.0f} us",
            ),
            (
                f"{name} CPU per request via the door: replica + door + client",
                f"{door1.replica_us.get(t, math.nan):.0f} + {door1.door_us.get(t, math.nan):.0f}"
                f" + {door1.client_us(t):.0f} = {_cost_us(door1, t):.0f} us (1 replica; "
                f"direct: replica {direct.replica_us.get(t, math.nan):.0f} us)",
            ),
            (
                f"#12 {name} ceiling on 2 cores from that CPU",
                f"{v.ceiling[t]:.2f}x (2 cores / CPU per request / 1-replica throughput; "
                "docker-proxy and kernel not counted)",
            ),
        ]
    if door1.capped is not None and door2.capped is not None and v.capped_scale is not None:
        rows.append(
            (
                f"REST 2 replicas / 1, each capped at {CAPPED_CPUS} core (diagnostic)",
                f"{v.capped_scale:.2f}x ({door1.capped.rps:,.0f} -> {door2.capped.rps:,.0f} req/s)",
            )
        )
    rows.append(
        (
            "load client CPU, most in one run",
            f"{max(p.client_cpu for p in (direct, door1, door2)):.2f} cores"
            + (" (may limit the figures)" if v.client_bound else ""),
        )
    )
    rows.append(("errors (all phases)", str(v.errors)))
    return rows, v.met


# --------------------------------------------------------------------------- charts


def chart_series(
    direct: Phase, door1: Phase, door2: Phase
) -> tuple[dict[str, list[float]], dict[str, LoadResult]]:
    """What the charts draw (pure): one-client latencies (seconds) direct and through the door
    with one replica, and the loaded runs of every phase by name."""
    latencies = load_latencies(
        {
            f"{t.upper() if t == 'rest' else 'gRPC'} {phase.name}": phase.sequential[t]
            for t in TRANSPORTS
            for phase in (direct, door1)
        }
    )
    loads = {
        f"{t.upper() if t == 'rest' else 'gRPC'} {phase.name}": phase.loaded[t]
        for t in TRANSPORTS
        for phase in (direct, door1, door2)
    }
    return latencies, loads


def write_charts(direct: Phase, door1: Phase, door2: Phase, directory: Path) -> list[Path]:
    """``frontdoor-latency.png`` (one-client latency distributions, direct vs door) and
    ``frontdoor-throughput.png`` (loaded requests per second of every phase)."""
    latencies, loads = chart_series(direct, door1, door2)
    return [
        latency_distribution(
            latencies,
            chart_path(directory, "frontdoor", "latency"),
            "bench frontdoor: one client, half_plus_two, direct vs through the door",
        ),
        rates_over_time(
            load_rates(loads),
            chart_path(directory, "frontdoor", "throughput"),
            f"bench frontdoor: closed loop ({REST_CONNECTIONS} REST connections, "
            f"{GRPC_CONCURRENCY} gRPC calls)",
            span=load_span(loads),
        ),
    ]


# --------------------------------------------------------------------------- measuring


class Placement:
    """Puts a phase's containers on their CPUs with ``docker update`` (the engine's cgroups)."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.project = project
        docker = shutil.which("docker")
        if docker is None:
            raise StackError(
                "bench frontdoor needs the docker CLI to pin containers to CPUs",
                hint="install the docker CLI (docker.io) or put it on PATH",
            )
        self.docker = docker

    def containers(self, service: str) -> list[Any]:
        found = self.client.containers.list(
            filters={"label": [f"{LABEL_PROJECT}={self.project}", f"{COMPOSE_SERVICE}={service}"]}
        )
        return sorted(found, key=lambda c: c.name)

    def pin(self, container: Any, cpuset: str | None, cpus: float) -> None:
        cpuset = cpuset if cpuset is not None else _all_cpus()
        command = [self.docker, "update", "--cpuset-cpus", cpuset, "--cpus", f"{cpus:g}"]
        result = subprocess.run(
            [*command, container.id], capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            raise StackError(
                f"cannot pin {container.name} to CPU {cpuset}: {result.stderr.strip()}",
                hint="the engine must allow cgroup CPU settings (docker info: CPU set support)",
            )

    def place(self, layout: Layout, *, replica_cpus: float) -> None:
        replicas = self.containers("serving")
        if len(replicas) != len(layout.replicas):
            raise StackError(
                f"expected {len(layout.replicas)} serving containers in {self.project}, "
                f"found {len(replicas)}"
            )
        for container, cpuset in zip(replicas, layout.replicas, strict=True):
            self.pin(container, cpuset, replica_cpus)
        for door in self.containers("frontend"):
            self.pin(door, layout.door, 1.0 if layout.door is not None else len(_cpu_list()))

    def cpu_ns(self, service: str) -> int:
        """CPU time the service's containers used so far (nanoseconds, the engine's counter)."""
        total = 0
        for container in self.containers(service):
            stats = self.client.api.stats(container.id, stream=False, one_shot=True)
            total += int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
        return total


def _cpu_list() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _all_cpus() -> str:
    return ",".join(str(cpu) for cpu in _cpu_list())


def _specs(
    rest_port: int, grpc_port: int, client_cpus: str | None
) -> Iterator[tuple[str, str, LoadSpec]]:
    """(kind, transport, spec) of one phase's runs: sequential first, then loaded."""
    rest = LoadSpec("rest", rest_port, SMALL_BODY, PATH, cpus=client_cpus)
    grpc = LoadSpec("grpc", grpc_port, GRPC_BODY, cpus=client_cpus)
    for transport, spec in (("rest", rest), ("grpc", grpc)):
        yield (
            "sequential",
            transport,
            _replace(spec, seconds=10, warmup_s=0.5, max_requests=SEQUENTIAL_REQUESTS),
        )
    yield "loaded", "rest", _replace(rest, concurrency=REST_CONNECTIONS, seconds=WINDOW_S)
    yield "loaded", "grpc", _replace(grpc, concurrency=GRPC_CONCURRENCY, seconds=WINDOW_S)


def _replace(spec: LoadSpec, **changes: Any) -> LoadSpec:
    return LoadSpec(**{**spec.__dict__, **changes})


def _measure(
    name: str,
    ports: tuple[int, int],
    placement: Placement,
    context: BenchContext,
    *,
    door: bool,
) -> Phase:
    layout = LAYOUTS[name]
    placement.place(layout, replica_cpus=1.0)
    sequential: dict[str, LoadResult] = {}
    loaded: dict[str, LoadResult] = {}
    door_us: dict[str, float] = {}
    replica_us: dict[str, float] = {}
    for kind, transport, spec in _specs(*ports, layout.client):
        before_door = placement.cpu_ns("frontend") if door else 0
        before_replicas = placement.cpu_ns("serving")
        result = run_load(spec)
        if kind == "sequential":
            sequential[transport] = result
            continue
        loaded[transport] = result
        if result.sent:
            used = placement.cpu_ns("serving") - before_replicas
            replica_us[transport] = used / 1000 / result.sent
        if door and result.sent:
            door_us[transport] = (placement.cpu_ns("frontend") - before_door) / 1000 / result.sent
    capped = None
    if door:
        placement.place(layout, replica_cpus=CAPPED_CPUS)
        rest = next(spec for kind, t, spec in _specs(*ports, layout.client) if kind == "loaded")
        capped = run_load(rest)
    phase = Phase(name, sequential, loaded, door_us, capped, replica_us)
    context.say(
        f"{name} ({layout.describe()}): p50 REST {format_ms(phase.p50('rest'), 3)}, "
        f"gRPC {format_ms(phase.p50('grpc'), 3)}; {phase.rps('rest'):,.0f} REST and "
        f"{phase.rps('grpc'):,.0f} gRPC req/s"
        + (f"; REST capped {capped.rps:,.0f} req/s" if capped is not None else "")
        + f"; {phase.errors} errors"
    )
    return phase


@benchmark(
    "frontdoor",
    "door overhead vs direct with 1 replica (#11) and 2 replicas vs 1 through the door (#12), "
    "REST and gRPC",
    default_runs=1,
)
def bench_frontdoor(context: BenchContext) -> BenchResult:
    """Targets #11 and #12, half_plus_two, measured against the direct ports in one run."""
    client = ensure_engine(say=context.say)
    context.say("making sure the demo models, the serving and the door images exist (not timed)")
    write_demo_models(context.root / "models", say=context.say)
    demo = load_spec(context.root / "config" / "stack.yaml", check_disk=True)
    ensure_image(client, demo.serving.image, source_root=context.root, say=context.say)
    ensure_frontend_image(client, demo.frontend.image, source_root=context.root, say=context.say)
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-door-") as tmp:
        spec_path = write_bench_project(Path(tmp), context.root)
        base = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        base["project"] = base["project"].replace("bench-up", "bench-door")
        ports = (int(base["serving"]["rest_port"]), int(base["serving"]["grpc_port"]))
        lifecycle = Lifecycle(spec_path, source_root=context.root, client=client)
        placement = Placement(client, base["project"])
        phases: list[Phase] = []
        try:
            for name, replicas, door in (
                ("direct, 1 replica", 1, False),
                ("door, 1 replica", 1, True),
                ("door, 2 replicas", 2, True),
            ):
                data = phase_spec(base, replicas=replicas, door=door)
                spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
                context.say(f"{name}: up")
                lifecycle.up(timeout=300)
                phases.append(_measure(name, ports, placement, context, door=door))
        finally:
            lifecycle.down(volumes=True)
            remove_labelled(client, base["project"], volumes=True)
    direct, door1, door2 = phases
    rows, met = frontdoor_rows(direct, door1, door2)
    charts = write_charts(direct, door1, door2, context.root / REPORT_DIR)
    return BenchResult(
        name="frontdoor",
        target="targets.md #11: added p50 <= 0.3 ms, throughput >= 0.9x direct (1 replica); "
        "#12: 2 replicas >= 1.6x 1 replica through the door, 0 errors; REST and gRPC",
        rows=rows,
        met=met,
        notes=[
            "half_plus_two; one-client p50 over up to "
            f"{SEQUENTIAL_REQUESTS} requests; throughput with {REST_CONNECTIONS} keep-alive "
            f"REST connections or {GRPC_CONCURRENCY} concurrent gRPC calls on one channel for "
            f"{WINDOW_S:.0f} s after 1 s warm-up; the door runs {DOOR_THREADS} HAProxy thread",
            *(f"{name}: {layout.describe()}" for name, layout in LAYOUTS.items()),
            "#12 as asked pins each replica to its own core, but the load client and the door "
            "need CPU too and share those two cores; the capped row gives each replica "
            f"{CAPPED_CPUS} of its core so the replicas, not the machine, limit the figure",
            "every path crosses the engine's published port (docker-proxy) on 127.0.0.1, "
            "direct and through the door alike",
            "the ceiling row: the most 2 replicas could give on 2 cores if every request costs "
            "the CPU measured with 1 replica (docker-proxy and the kernel's share not counted, "
            "so the true ceiling is lower); a ceiling under 1.6x means #12 cannot be met here",
            "charts: " + ", ".join(str(p) for p in charts),
        ],
    )
