"""``invoke bench frontdoor``: targets.md #11 (the door's overhead) and #12 (2 replicas vs 1).

One temporary project (the demo spec's models on free ports), brought up three times with
``Lifecycle.up`` and measured with the serve bench's closed-loop client (REST half_plus_two,
127.0.0.1 only, bounded):

1. one replica, no door: the server's published port (the reference, measured in the same run);
2. one replica behind the door (``frontend.enabled: true``): the door's port;
3. two replicas behind the door.

Per phase: sequential p50 (one client) and throughput (``CONCURRENCY`` clients). #11: added p50
and door/direct throughput with one replica; #12: door throughput with 2 replicas / with 1.
Everything is torn down at the end (``down``, label sweep), even on failure.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfstack.bench.loadgen import format_ms
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.bench.serve_load import LoadResult, LoadSpec, run_load
from tfstack.bench.serve_reference import SMALL_BODY
from tfstack.bench.up import write_bench_project
from tfstack.build.frontend import ensure_frontend_image
from tfstack.build.images import ensure_image
from tfstack.docker.compose import remove_labelled
from tfstack.docker.engine import ensure_engine
from tfstack.models.demo import write_demo_models
from tfstack.spec import load_spec
from tfstack.stack.lifecycle import Lifecycle

ADDED_P50_TARGET_MS = 0.3
THROUGHPUT_RATIO_TARGET = 0.9
SCALE_TARGET = 1.6
CONCURRENCY = 16
SEQUENTIAL_REQUESTS = 1500
PATH = "/v1/models/half_plus_two:predict"


@dataclass(frozen=True)
class Phase:
    """Figures of one configuration: sequential latency and closed-loop throughput."""

    name: str
    sequential: LoadResult
    loaded: LoadResult

    @property
    def p50(self) -> float:
        return self.sequential.percentile(0.50)

    @property
    def errors(self) -> int:
        return self.sequential.errors + self.loaded.errors


def phase_spec(data: dict[str, Any], *, replicas: int, door: bool) -> dict[str, Any]:
    """The bench spec for one phase (pure): replica count and the door forced on or off."""
    changed = {**data, "serving": {**data.get("serving", {}), "replicas": replicas}}
    changed["frontend"] = {**data.get("frontend", {}), "enabled": door}
    return changed


def _measure(name: str, port: int, window: float, context: BenchContext) -> Phase:
    sequential = run_load(
        LoadSpec(
            "rest",
            port,
            SMALL_BODY,
            PATH,
            seconds=10,
            warmup_s=0.5,
            max_requests=SEQUENTIAL_REQUESTS,
        )
    )
    loaded = run_load(
        LoadSpec(
            "rest", port, SMALL_BODY, PATH, concurrency=CONCURRENCY, seconds=window, warmup_s=1.0
        )
    )
    context.say(
        f"{name}: p50 {format_ms(sequential.percentile(0.5), 3)} sequential, "
        f"{loaded.rps:,.0f} req/s with {CONCURRENCY} clients, "
        f"{sequential.errors + loaded.errors} errors"
    )
    return Phase(name, sequential, loaded)


def frontdoor_rows(direct: Phase, door1: Phase, door2: Phase) -> tuple[list[tuple[str, str]], bool]:
    """The report's rows and whether #11 and #12 are met (pure)."""
    added = door1.p50 - direct.p50
    ratio = door1.loaded.rps / direct.loaded.rps if direct.loaded.rps else 0.0
    scale = door2.loaded.rps / door1.loaded.rps if door1.loaded.rps else 0.0
    errors = direct.errors + door1.errors + door2.errors
    rows = [
        (
            "direct, 1 replica: p50 / throughput",
            f"{format_ms(direct.p50, 3)} / {direct.loaded.rps:,.0f} req/s",
        ),
        (
            "door, 1 replica: p50 / throughput",
            f"{format_ms(door1.p50, 3)} / {door1.loaded.rps:,.0f} req/s",
        ),
        ("#11 added p50 through the door", f"{added:.3f} ms (target <= {ADDED_P50_TARGET_MS} ms)"),
        ("#11 throughput door / direct", f"{ratio:.2f}x (target >= {THROUGHPUT_RATIO_TARGET})"),
        ("door, 2 replicas: throughput", f"{door2.loaded.rps:,.0f} req/s"),
        ("#12 throughput 2 replicas / 1", f"{scale:.2f}x (target >= {SCALE_TARGET})"),
        ("errors (all phases)", str(errors)),
    ]
    met = (
        added <= ADDED_P50_TARGET_MS
        and ratio >= THROUGHPUT_RATIO_TARGET
        and scale >= SCALE_TARGET
        and errors == 0
    )
    return rows, met


@benchmark(
    "frontdoor",
    "door overhead vs direct with 1 replica (#11) and 2 replicas vs 1 through the door (#12)",
    default_runs=1,
)
def bench_frontdoor(context: BenchContext) -> BenchResult:
    """Targets #11 and #12, REST half_plus_two, measured against the direct port in one run."""
    client = ensure_engine(say=context.say)
    context.say("making sure the demo models, the serving and the door images exist (not timed)")
    write_demo_models(context.root / "models", say=context.say)
    demo = load_spec(context.root / "config" / "stack.yaml", check_disk=True)
    ensure_image(client, demo.serving.image, source_root=context.root, say=context.say)
    ensure_frontend_image(client, demo.frontend.image, source_root=context.root, say=context.say)
    window = 8.0
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-door-") as tmp:
        spec_path = write_bench_project(Path(tmp), context.root)
        base = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        base["project"] = base["project"].replace("bench-up", "bench-door")
        port = int(base["serving"]["rest_port"])
        lifecycle = Lifecycle(spec_path, source_root=context.root, client=client)
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
                phases.append(_measure(name, port, window, context))
        finally:
            lifecycle.down(volumes=True)
            remove_labelled(client, base["project"], volumes=True)
    rows, met = frontdoor_rows(*phases)
    return BenchResult(
        name="frontdoor",
        target="targets.md #11: added p50 <= 0.3 ms, throughput >= 0.9x direct (1 replica); "
        "#12: 2 replicas >= 1.6x 1 replica through the door, 0 errors",
        rows=rows,
        met=met,
        notes=[
            f"REST half_plus_two; sequential p50 over up to {SEQUENTIAL_REQUESTS} requests, "
            f"throughput with {CONCURRENCY} closed-loop clients for {window:.0f} s",
            "client, door and replicas share this machine's cores: #12 on 2 cores competes with "
            "the load client and the door for CPU",
        ],
    )
