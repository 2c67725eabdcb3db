"""Benchmarks run by ``invoke bench <what>``; each prints its figures beside targets.md.

A benchmark is a function taking a :class:`BenchContext` and returning a :class:`BenchResult`,
registered with the :func:`benchmark` decorator. Add new ones (``up``, ``serve``, ``rollout``) in
this module, or in a module listed in :data:`BENCHMARK_MODULES` (imported on first lookup), so
``invoke bench`` lists them without touching the task. House rules (targets.md): benchmarks are
tasks, never timed unit tests; they print the reference measured in the same run beside the
project's figure; load loops stay on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfstack.bench.loadgen import format_ms
from tfstack.core.files import write_files_atomically
from tfstack.errors import UsageError
from tfstack.render import (
    COMPOSE_FILE,
    check_compose_file,
    check_protos,
    check_rendered,
    render_stack,
)
from tfstack.spec import load_spec

Say = Callable[[str], None]
MIN_MINUTES = 1.0
MAX_MINUTES = 30.0  # a soak stays bounded: loopback load, at most half an hour

BENCHMARK_MODULES: tuple[str, ...] = (
    "tfstack.bench.up",
    "tfstack.bench.serve",
    "tfstack.bench.rollout",
    "tfstack.bench.canary",
    "tfstack.bench.soak",
    "tfstack.bench.frontdoor",
    "tfstack.bench.swarm",
)
"""Extra modules defining benchmarks with :func:`benchmark`; imported before any lookup."""


@dataclass(frozen=True)
class BenchContext:
    """What every benchmark gets: the checkout, repetitions asked for (None = default), a logger."""

    root: Path
    """The tfstack checkout (config/, models/, runtime/): from the invoke config, never guessed."""
    runs: int | None = None
    say: Say = lambda text: None
    images: tuple[str, ...] = ()
    """Images to bench instead of the local server (``invoke bench serve --image``)."""
    minutes: float | None = None
    """How long a timed benchmark runs (``invoke bench soak --minutes 3``); None: its default."""


BENCH_SCHEMA = "tfstack.bench/v1"
"""``invoke bench <what> --json``: the document's ``schema`` (docs/json-output.md)."""
_FIGURE = re.compile(r"^(-?\d+(?:\.\d+)?)(?: ?(ms|s|us|x|%|MB|kB|GB|/s|req/s)(?![\w/]))?")


def parse_figure(value: str) -> tuple[float | None, str | None]:
    """The leading number of a row's text and its unit: ``"12.3 ms (5 runs)"`` -> (12.3, "ms")."""
    match = _FIGURE.match(value.strip())
    if match is None:
        return None, None
    return float(match.group(1)), match.group(2)


@dataclass(frozen=True)
class BenchResult:
    """Figures of one benchmark: (label, value) rows, whether the target is met, and notes."""

    name: str
    target: str
    rows: list[tuple[str, str]]
    met: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON-able document (``invoke bench <what> --json``)."""
        rows = []
        for label, value in self.rows:
            figure, unit = parse_figure(value)
            rows.append({"name": label.strip(), "value": value, "figure": figure, "unit": unit})
        return {
            "schema": BENCH_SCHEMA,
            "name": self.name,
            "goal": self.target,
            "verdict": "met" if self.met else "missed",
            "met": self.met,
            "rows": rows,
            "notes": list(self.notes),
        }

    def report(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=0)
        lines = [f"bench {self.name}: {self.target}"]
        lines += [f"  {label:<{width}}  {value}" for label, value in self.rows]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  result: {'target met' if self.met else 'TARGET MISSED'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    default_runs: int
    function: Callable[[BenchContext], BenchResult]


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str, description: str, *, default_runs: int
) -> Callable[[Callable[[BenchContext], BenchResult]], Callable[[BenchContext], BenchResult]]:
    """Register a benchmark under ``name`` (``invoke bench <name>``)."""

    def register(
        function: Callable[[BenchContext], BenchResult],
    ) -> Callable[[BenchContext], BenchResult]:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = Benchmark(name, description, default_runs, function)
        return function

    return register


def _load_plugins() -> None:
    for module in BENCHMARK_MODULES:
        importlib.import_module(module)


def describe_benchmarks() -> str:
    """What `invoke bench` can run: one line per benchmark, and the options."""
    _load_plugins()
    lines = ["usage: invoke bench <name> [--runs N]", "benchmarks:"]
    lines += [f"  {b.name:<10} {b.description}" for b in sorted(BENCHMARKS.values(), key=_name)]
    return "\n".join(lines)


def _name(item: Benchmark) -> str:
    return item.name


def run_benchmark(
    what: str,
    *,
    root: Path,
    runs: int | None = None,
    say: Say = lambda text: None,
    images: tuple[str, ...] = (),
    minutes: float | None = None,
) -> BenchResult:
    """Run the benchmark called ``what``; UsageError (exit 2) for an unknown name or bad runs."""
    _load_plugins()
    if what not in BENCHMARKS:
        close = difflib.get_close_matches(what, list(BENCHMARKS), n=1)
        known = ", ".join(sorted(BENCHMARKS))
        raise UsageError(
            f"no benchmark called {what!r} (known: {known})",
            hint=f"did you mean `invoke bench {close[0]}`?" if close else None,
        )
    if runs is not None and not 1 <= runs <= 1000:
        raise UsageError(f"--runs must be between 1 and 1000, not {runs}")
    if minutes is not None and not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise UsageError(
            f"--minutes must be between {MIN_MINUTES:g} and {MAX_MINUTES:g}, not {minutes:g}"
        )
    chosen = BENCHMARKS[what]
    return chosen.function(
        BenchContext(
            root,
            runs=runs or chosen.default_runs,
            say=say,
            images=tuple(images),
            minutes=minutes,
        )
    )


# --------------------------------------------------------------------------- render (target #10)

RENDER_TARGET_S = 1.0
BENCH_MODELS = 200


def write_bench_project(root: Path, models: int = BENCH_MODELS) -> Path:
    """A project with ``models`` models (2 versions each, varied policies and labels); returns the
    spec path. Version directories hold a placeholder saved_model.pb: validation looks for the
    file, rendering never reads it."""
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(models):
        name = f"model_{index:03d}"
        for version in (1, 2):
            version_dir = root / "models" / name / str(version)
            version_dir.mkdir(parents=True, exist_ok=True)
            (version_dir / "saved_model.pb").write_bytes(b"\x08\x01")
        kind = index % 3
        if kind == 0:
            entries.append(
                {"name": name, "policy": {"specific": [1, 2]}, "labels": {"stable": 1, "canary": 2}}
            )
        elif kind == 1:
            entries.append({"name": name, "policy": {"latest": 2}})
        else:
            entries.append({"name": name, "policy": {"all": True}})
    spec = {
        "format": 1,
        "project": "bench",
        "model_repository": "../models",
        "models": entries,
        "serving": {"resources": {"cpus": 2, "memory": "4g"}},
        "batching": {"enabled": True, "max_batch_size": 32, "allowed_batch_sizes": [8, 16, 32]},
        "monitoring": {"enabled": True},
    }
    spec_path = config / "stack.yaml"
    # JSON is YAML: one line per model keeps the file small and the parse realistic.
    lines = [json.dumps({k: v for k, v in spec.items() if k != "models"}, indent=1)[:-2] + ","]
    lines.append(' "models": [')
    lines.append(",\n".join(f"  {json.dumps(entry)}" for entry in entries))
    lines.append(" ]\n}\n")
    spec_path.write_text("\n".join(lines), encoding="utf-8")
    return spec_path


def _files_digest(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class _Timing:
    validate: float
    render: float
    check_protos: float
    check_compose: float
    digest: str

    @property
    def total(self) -> float:
        return self.validate + self.render + self.check_protos + self.check_compose


def _validate_and_render_once(spec_path: Path, root: Path) -> _Timing:
    start = time.perf_counter()
    spec = load_spec(spec_path, check_disk=True, project_root=root)
    validated = time.perf_counter()
    files = render_stack(spec, spec_path, root)
    rendered = time.perf_counter()
    check_protos(files)
    protos = time.perf_counter()
    check_compose_file(files[COMPOSE_FILE], root)
    composed = time.perf_counter()
    return _Timing(
        validated - start,
        rendered - validated,
        protos - rendered,
        composed - protos,
        _files_digest(files),
    )


_COLD_SNIPPET = """
import sys, time
from pathlib import Path
start = time.perf_counter()
from tfstack.bench.runner import _validate_and_render_once
timing = _validate_and_render_once(Path(sys.argv[1]), Path(sys.argv[2]))
print(time.perf_counter() - start, timing.digest)
"""


def _cold_run(spec_path: Path, root: Path) -> tuple[float, str]:
    """validate+render+check in a fresh interpreter: the imports a real `invoke render` pays."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _COLD_SNIPPET, str(spec_path), str(root)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    wall = time.perf_counter() - started
    _inner, digest = result.stdout.split()
    return wall, digest


@benchmark(
    "render",
    f"validate + render + check a generated {BENCH_MODELS}-model spec (targets.md #10)",
    default_runs=7,
)
def bench_render(context: BenchContext) -> BenchResult:
    """Target #10: render + validate a 200-model spec in at most 1 s, byte-identical re-render."""

    runs = context.runs or 7
    with tempfile.TemporaryDirectory(prefix="tfstack-bench-render-") as tmp:
        root = Path(tmp)
        context.say(f"writing a {BENCH_MODELS}-model project in {root}")
        spec_path = write_bench_project(root)
        first = _validate_and_render_once(spec_path, root)  # imports, template compilation
        context.say(f"timing {runs} runs")
        timings = [_validate_and_render_once(spec_path, root) for _ in range(runs)]
        cold_wall, cold_digest = _cold_run(spec_path, root)
        text = spec_path.read_text(encoding="utf-8")
        fastest_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        parse_times = []
        for _ in range(runs):
            start = time.perf_counter()
            yaml.load(text, Loader=fastest_loader)
            parse_times.append(time.perf_counter() - start)

        # Byte-identical re-render: write once, then a second render must change nothing.
        spec = load_spec(spec_path, check_disk=True, project_root=root)
        files = render_stack(spec, spec_path, root)
        check_rendered(files, root)
        written = write_files_atomically(root, files)
        rewritten = write_files_atomically(root, render_stack(spec, spec_path, root))
        sizes = sum(len(text.encode()) for text in files.values())

    digests = sorted({first.digest, cold_digest, *(t.digest for t in timings)})
    identical = len(digests) == 1 and not rewritten and bool(written)
    median = statistics.median(t.total for t in timings)

    def part(attribute: str) -> str:
        return format_ms(statistics.median(getattr(t, attribute) for t in timings) * 1000, 0)

    reference = statistics.median(parse_times)
    rows = [
        ("validate+render+check, warm median", f"{format_ms(median * 1000, 0)} ({runs} runs)"),
        ("  load_spec (YAML, schema, disk)", part("validate")),
        ("  render_stack", part("render")),
        ("  proto checks", part("check_protos")),
        ("  docker compose config", part("check_compose")),
        ("first run in process (imports)", format_ms(first.total * 1000, 0)),
        (
            "fresh interpreter, wall (like `invoke render`)",
            f"{format_ms(cold_wall * 1000, 0)} ({cold_wall / RENDER_TARGET_S:.2f}x the target)",
        ),
        (
            f"reference: yaml {fastest_loader.__name__} of the spec alone",
            format_ms(reference * 1000, 0),
        ),
        ("ratio warm median / reference", f"{median / reference:.1f}x" if reference else "n/a"),
        (
            "target",
            f"<= {format_ms(RENDER_TARGET_S * 1000, 0)}; "
            f"warm median is {median / RENDER_TARGET_S:.2f}x",
        ),
        ("output", f"{len(files)} files, {sizes} bytes, sha256 {digests[0][:16]}..."),
        (
            "byte-identical re-render",
            "yes (every run, a fresh process, and a second write changed nothing)"
            if identical
            else f"NO: {len(digests)} different outputs; second write changed {rewritten}",
        ),
    ]
    notes = ["absolute times drift between machines; compare with the reference from the same run"]
    return BenchResult(
        name="render",
        target=f"targets.md #10: {BENCH_MODELS} models validated and rendered in <= 1 s",
        rows=rows,
        met=identical and median <= RENDER_TARGET_S,
        notes=notes,
    )
