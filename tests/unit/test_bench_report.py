"""tfstack.bench.report: PNG charts from load samples, fixed names, readable files."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from tfstack.bench.canary import write_charts as canary_charts
from tfstack.bench.loadgen import LoadReport, Sample
from tfstack.bench.report import (
    chart_path,
    latency_distribution,
    load_latencies,
    load_rates,
    load_span,
    per_second,
    rates_over_time,
    rollout_timeline,
    series_rates,
    throughput,
)
from tfstack.bench.rollout import write_charts
from tfstack.bench.serve_load import LoadResult
from tfstack.errors import WriteError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rollout_load() -> tuple[LoadReport, dict[str, tuple[float, float]]]:
    """30 s at 40/s: v1 answers until 12 s, v2 after, a slow second at 12 s and 2 failures."""
    rng = random.Random(3)
    samples = []
    for i in range(30 * 40):
        at = 100.0 + i / 40
        version = 1 if at < 112 else 2
        latency = rng.uniform(0.001, 0.003) + (0.02 if 112 <= at < 113 else 0.0)
        ok = i not in (500, 501)
        samples.append(Sample("rest", at, latency, ok, 2.5, version, None if ok else "503"))
    report = LoadReport(samples, 100.0, 130.0, "time cap")
    return report, {"verify": (104.0, 110.0), "promote": (111.5, 112.5)}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_chart_names_are_fixed() -> None:
    """One name per benchmark and chart, so a new run replaces the old pictures."""
    assert chart_path(Path("state/bench"), "rollout", "timeline") == Path(
        "state/bench/rollout-timeline.png"
    )


def test_rollout_timeline_is_a_png(tmp_path: Path) -> None:
    """The timeline is written as a PNG of the expected size, atomically (no temp file left)."""
    report, phases = rollout_load()
    path = rollout_timeline(report, phases, tmp_path / "r-timeline.png", "rollout")
    assert png_size(path) == (990, 825)  # 9 x 7.5 inches at 110 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-timeline.png"]


def test_latency_and_throughput_charts(tmp_path: Path) -> None:
    """Distribution and throughput charts are written; an empty series is skipped."""
    report, _ = rollout_load()
    by_version = {f"v{v}": [s.latency_s for s in report.samples if s.version == v] for v in (1, 2)}
    lat = latency_distribution({**by_version, "none": []}, tmp_path / "lat.png", "latency")
    rate = throughput(report, tmp_path / "rate.png", "throughput")
    assert png_size(lat) == (825, 462)
    assert png_size(rate)[0] == 825


def test_unwritable_directory_names_the_file(tmp_path: Path) -> None:
    """A chart that cannot be written is a WriteError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    report, _ = rollout_load()
    with pytest.raises(WriteError) as info:
        throughput(report, blocker / "sub" / "rate.png", "t")
    assert str(blocker / "sub" / "rate.png") in str(info.value)


def test_bench_rollout_writes_timeline_and_latency(tmp_path: Path) -> None:
    """bench rollout's charts: the timeline and per-version latency under fixed names."""
    report, _ = rollout_load()
    marks = {"verify:start": 104.0, "verify:done": 110.0, "load:start": 111.0}
    paths = write_charts(report, {**marks, "promote:done": 112.5}, tmp_path)
    assert [p.name for p in paths] == ["rollout-timeline.png", "rollout-latency.png"]
    assert all(png_size(p)[0] > 0 for p in paths)


def test_per_second_counts_events_per_bin_and_clamps_the_edges() -> None:
    """Events per one-second bin over [start, end); early and late events land in the edge bins."""
    assert per_second([0.1, 0.2, 1.5, 2.99, 3.0, -1.0, 9.0], 0.0, 3.0) == [3, 1, 3]
    assert per_second([], 0.0, 0.2) == [0]


def test_load_results_become_latency_and_rate_series() -> None:
    """Latencies in seconds per run; completion times per run, failures as their own series only
    when there are some; the span is the longest window."""
    ok = LoadResult(3, 0, 2.0, [1.0, 2.0, 4.0], 0.3, done_s=[0.1, 0.5, 1.9])
    bad = LoadResult(1, 2, 3.0, [5.0], 0.3, done_s=[0.2], failed_s=[1.0, 2.5])
    assert load_latencies({"ok": ok}) == {"ok": [0.001, 0.002, 0.004]}
    assert load_rates({"ok": ok, "bad": bad}) == {
        "ok": [0.1, 0.5, 1.9],
        "bad": [0.2],
        "bad failed": [1.0, 2.5],
    }
    assert load_span({"ok": ok, "bad": bad}) == (0.0, 3.0)
    assert load_span({}) == (0.0, 1.0)


def test_rates_over_time_draws_named_series(tmp_path: Path) -> None:
    """A rate chart of several series (an empty one skipped, log scale allowed) is a PNG; the
    rollout's throughput chart is drawn by the same function."""
    series = {"a": [i / 100 for i in range(500)], "b": [i / 10 for i in range(50)], "c": []}
    path = rates_over_time(series, tmp_path / "rates.png", "rates", span=(0, 5), log_scale=True)
    assert png_size(path) == (825, 374)
    empty = rates_over_time({"none": []}, tmp_path / "empty.png", "nothing")
    assert png_size(empty) == (825, 374)


def test_bench_canary_writes_its_timeline_with_the_traffic_steps(tmp_path: Path) -> None:
    """bench canary's chart: one timeline, the traffic steps that ran shaded."""
    report, _ = rollout_load()
    marks = {"traffic_10:start": 104.0, "traffic_10:done": 108.0, "traffic_50:start": 108.0}
    (path,) = canary_charts(report, marks, tmp_path)
    assert path.name == "canary-timeline.png"
    assert png_size(path)[0] > 0


def test_series_rates_stop_at_the_last_event_and_scale_a_short_last_bin() -> None:
    """A series ends with its last event's bin; a half-second last bin counts double per second."""
    assert series_rates([0.1, 0.2, 1.5], 0.0, 10.0) == ([0, 1, 2], [2.0, 1.0])
    edges, rates = series_rates([0.1, 1.2, 2.4], 0.0, 2.5)
    assert edges == [0, 1, 2, 2.5] and rates == [1.0, 1.0, 2.0]
