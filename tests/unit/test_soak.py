"""The soak benchmark's pure parts: /proc readings, the verdict, the --minutes bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfstack.bench.loadgen import LoadReport, Sample
from tfstack.bench.runner import run_benchmark
from tfstack.bench.soak import ProcessFigures, Window, _result, read_process
from tfstack.errors import StackError, UsageError


def fake_proc(tmp_path: Path, rss_kb: int, threads: int, fds: int) -> Path:
    base = tmp_path / "proc" / "42"
    (base / "fd").mkdir(parents=True)
    (base / "status").write_text(f"Name:\tserver\nVmRSS:\t{rss_kb} kB\nThreads:\t{threads}\n")
    for fd in range(fds):
        (base / "fd" / str(fd)).touch()
    return tmp_path / "proc"


def test_process_figures_come_from_proc(tmp_path: Path) -> None:
    """RSS (kB -> bytes), thread count and fd count are read from /proc/<pid>."""
    proc = fake_proc(tmp_path, rss_kb=1000, threads=12, fds=7)
    assert read_process(42, proc) == ProcessFigures(1_024_000, 7, 12)


def test_a_hidden_process_is_a_clear_error(tmp_path: Path) -> None:
    """No /proc entry: a StackError saying where to run the soak, no traceback."""
    with pytest.raises(StackError, match="cannot read /proc/7"):
        read_process(7, tmp_path)


def window(index: int, rss: int, *, failed: int = 0) -> Window:
    report = LoadReport()
    report.samples = [Sample("rest/default", float(i), 0.01, True) for i in range(10)]
    report.samples += [Sample("grpc/default", 0.0, 0.01, False, error="boom")] * failed
    return Window(index, "reload", report, ProcessFigures(rss, 30, 20), 0.5)


def test_verdict_needs_no_failures_and_flat_rss_fds_threads() -> None:
    """Met only with 0 failures, RSS within 10 %, fds and threads flat."""
    start = ProcessFigures(100_000_000, 30, 20)
    assert _result(1, start, [window(0, 100_000_000), window(1, 109_000_000)]).met
    assert not _result(1, start, [window(0, 100_000_000), window(1, 111_000_000)]).met
    assert not _result(1, start, [window(0, 100_000_000, failed=1)]).met
    grown = ProcessFigures(100_000_000, 30, 10)  # threads 10 -> 20: a leak
    assert not _result(1, grown, [window(0, 100_000_000)]).met


def test_minutes_are_bounded() -> None:
    """--minutes outside 1..30 is refused before anything starts (exit 2)."""
    with pytest.raises(UsageError, match="--minutes must be between 1 and 30"):
        run_benchmark("soak", root=Path("."), minutes=90)
