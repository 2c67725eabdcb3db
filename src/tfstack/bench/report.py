"""Pictures of a benchmark run: PNG charts beside its table (matplotlib's Agg canvas, no display).

Charts are drawn from the load generators' own records (the rollout generator's samples,
:class:`tfstack.bench.loadgen.LoadReport`, and the bench load client's latencies and completion
times, :class:`tfstack.bench.serve_load.LoadResult`), so they show what the table summarises: the
latency distribution, throughput and errors over time and, for rollouts, a timeline of which
version answered, errors and p99 per version, with the rollout's phases shaded. The data each
chart draws comes from small pure functions (:func:`per_second`, :func:`load_latencies`,
:func:`load_rates`), tested without drawing. File names are fixed per benchmark
(``<dir>/<bench>-<chart>.png``), so a new run replaces the previous run's pictures.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from tfstack.bench.loadgen import LoadReport, Sample, percentile
from tfstack.bench.serve_load import LoadResult
from tfstack.errors import WriteError

REPORT_DIR = Path("state") / "bench"
DPI = 110
BIN_S = 1.0
PHASE_COLORS = ("#fde68a", "#bfdbfe", "#c7f9cc", "#fbcfe8", "#e9d5ff", "#fed7aa")


def chart_path(directory: Path, bench: str, chart: str) -> Path:
    """``<directory>/<bench>-<chart>.png``: one fixed name per chart."""
    return directory / f"{bench}-{chart}.png"


def _figure(size: tuple[float, float]) -> Figure:
    """A figure on the Agg canvas (no pyplot, no global backend, no display)."""
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    """Write atomically (temporary sibling, then rename); errors name the file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(temporary, dpi=DPI, format="png", metadata={"Software": None})
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write the chart: {exc.strerror or exc}", path=str(path)) from exc
    return path


def _bins(samples: Sequence[Sample], start: float, end: float) -> list[list[Sample]]:
    count = max(1, math.ceil((end - start) / BIN_S))
    bins: list[list[Sample]] = [[] for _ in range(count)]
    for sample in samples:
        index = min(count - 1, max(0, int((sample.sent_at - start) / BIN_S)))
        bins[index].append(sample)
    return bins


def _shade(axes: Axes, phases: Mapping[str, tuple[float, float]], start: float) -> None:
    for (name, (begin, end)), color in zip(phases.items(), PHASE_COLORS * 4, strict=False):
        axes.axvspan(begin - start, end - start, color=color, alpha=0.7, lw=0, label=name, zorder=0)


def latency_distribution(samples: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Latency distributions (ms) of named series as cumulative curves, p50/p99 marked."""
    figure = _figure((7.5, 4.2))
    axes = figure.subplots()
    for name, values in samples.items():
        ordered = sorted(v * 1000 for v in values)
        if not ordered:
            continue
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        axes.step(ordered, share, where="post", label=f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("share of requests at most this fast")
    axes.set_ylim(0, 1.02)
    axes.axhline(0.99, color="grey", lw=0.6, ls=":")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def rollout_timeline(
    report: LoadReport,
    phases: Mapping[str, tuple[float, float]],
    path: Path,
    title: str,
) -> Path:
    """Per second: the share of answers by version, failed requests, p99 per version; phases
    (``name -> (start, end)`` monotonic times) shaded."""
    start = report.started_at or min((s.sent_at for s in report.samples), default=0.0)
    end = report.stopped_at or max((s.sent_at for s in report.samples), default=start + 1)
    bins = _bins(report.samples, start, end)
    times = [i * BIN_S for i in range(len(bins))]
    versions = sorted({s.version for s in report.samples if s.ok and s.version is not None})
    figure = _figure((9, 7.5))
    split, errors, latency = figure.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1, 2]}
    )
    bottom = [0.0] * len(bins)
    # Answers that name their version (gRPC says which version answered; REST does not).
    answered = [[s for s in b if s.ok and s.version is not None] for b in bins]
    for version in versions:
        shares = [
            sum(1 for s in known if s.version == version) / len(known) * 100 if known else 0.0
            for known in answered
        ]
        split.bar(times, shares, width=BIN_S, bottom=bottom, align="edge", label=f"v{version}")
        bottom = [a + b for a, b in zip(bottom, shares, strict=True)]
    split.set_ylabel("answers by version (%)", fontsize=9)
    split.set_ylim(0, 100)
    split.legend(loc="upper left", fontsize=8, ncol=4)
    failed = [sum(1 for s in b if not s.ok) for b in bins]
    _shade(errors, phases, start)
    errors.bar(times, failed, width=BIN_S, align="edge", color="#dc2626", zorder=2)
    errors.set_ylabel("failed / s")
    errors.set_ylim(0, max(1, *failed) * 1.2)
    for version in versions:
        p99 = [
            percentile(lat, 0.99) * 1000
            if (lat := [s.latency_s for s in b if s.ok and s.version == version])
            else math.nan
            for b in bins
        ]
        latency.plot([t + BIN_S / 2 for t in times], p99, marker=".", label=f"v{version} p99")
    _shade(latency, phases, start)
    latency.set_ylabel("p99 per second (ms)")
    latency.set_xlabel("seconds since the load started")
    latency.grid(True, alpha=0.3)
    latency.legend(loc="upper left", fontsize=8, ncol=3)
    split.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def per_second(times: Sequence[float], start: float, end: float) -> list[int]:
    """Events per :data:`BIN_S` bin from ``start`` to ``end`` (pure; the charts' data). Events
    outside the span count in the first or last bin."""
    count = max(1, math.ceil((end - start) / BIN_S))
    counts = [0] * count
    for at in times:
        counts[min(count - 1, max(0, int((at - start) / BIN_S)))] += 1
    return counts


def series_rates(
    times: Sequence[float], start: float, end: float
) -> tuple[list[float], list[float]]:
    """Bin edges (seconds from ``start``) and events per second of one non-empty series (pure).

    The series ends with the bin of its last event (a run shorter than the chart stops there
    instead of dropping to zero); a last bin shorter than :data:`BIN_S` is divided by its width.
    """
    last = min(end, start + math.ceil(max(max(times) - start, 1e-9) / BIN_S) * BIN_S)
    counts = per_second(times, start, last)
    edges = [min(i * BIN_S, last - start) for i in range(len(counts))] + [last - start]
    widths = [max(b - a, 1e-9) for a, b in itertools.pairwise(edges)]
    return edges, [count / width for count, width in zip(counts, widths, strict=True)]


def rates_over_time(
    series: Mapping[str, Sequence[float]],
    path: Path,
    title: str,
    *,
    span: tuple[float, float] | None = None,
    colors: Mapping[str, str] | None = None,
    log_scale: bool = False,
) -> Path:
    """Events per second of named series of event times (seconds), one line each, over ``span``
    (default: the first to the last event). Empty series are skipped."""
    events = [at for times in series.values() for at in times]
    start, end = span if span is not None else (min(events, default=0.0), max(events, default=1.0))
    figure = _figure((7.5, 3.4))
    axes = figure.subplots()
    for index, (name, times) in enumerate(series.items()):
        if not times:
            continue
        edges, rates = series_rates(times, start, end)
        mean = len(times) / max(edges[-1], 1e-9)
        axes.stairs(
            rates,
            edges,
            baseline=None,
            label=f"{name} (mean {mean:,.0f}/s)" if mean >= 10 else f"{name} (mean {mean:.1f}/s)",
            color=(colors or {}).get(name, f"C{index % 10}"),
        )
    if log_scale:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("requests / s")
    axes.grid(True, alpha=0.3)
    if axes.patches:
        axes.legend(loc="lower right", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    return _save(figure, path)


def throughput(report: LoadReport, path: Path, title: str) -> Path:
    """Requests and failures per second over the run."""
    start = report.started_at or min((s.sent_at for s in report.samples), default=0.0)
    end = report.stopped_at or max((s.sent_at for s in report.samples), default=start + 1)
    return rates_over_time(
        {
            "answered / s": [s.sent_at for s in report.samples if s.ok],
            "failed / s": [s.sent_at for s in report.samples if not s.ok],
        },
        path,
        title,
        span=(start, end),
        colors={"failed / s": "#dc2626"},
    )


def load_latencies(results: Mapping[str, LoadResult]) -> dict[str, list[float]]:
    """The answered requests' latencies (seconds) of named load runs, for
    :func:`latency_distribution` (pure)."""
    return {name: [ms / 1000 for ms in result.latencies_ms] for name, result in results.items()}


def load_rates(results: Mapping[str, LoadResult]) -> dict[str, list[float]]:
    """Completion times of named load runs for :func:`rates_over_time` (pure): answered requests
    under the run's name, failed ones (when there are any) under ``"<name> failed"``."""
    series: dict[str, list[float]] = {}
    for name, result in results.items():
        series[name] = list(result.done_s)
        if result.failed_s:
            series[f"{name} failed"] = list(result.failed_s)
    return series


def load_span(results: Mapping[str, LoadResult]) -> tuple[float, float]:
    """0 to the longest measuring window of the runs (their times start at their window)."""
    return 0.0, max((result.seconds for result in results.values()), default=1.0) or 1.0
