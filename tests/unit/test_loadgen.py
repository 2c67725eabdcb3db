"""Unit tests for the bounded load generator: accounting, caps, loopback only."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from tfstack.bench.loadgen import (
    HARD_MAX_REQUESTS,
    HARD_MAX_SECONDS,
    LoadGenerator,
    LoadRelay,
    LoadReport,
    Sample,
    check_loopback,
    first_value,
    percentile,
)
from tfstack.errors import UsageError


def test_every_request_is_recorded_with_its_target_value_and_failure() -> None:
    """Requests are spread round-robin; failures are counted with their error; values and
    versions answered are kept."""
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky() -> tuple[float | None, int | None]:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n % 5 == 0:
            raise ConnectionError("reset by peer")
        return 2.5, None

    generator = LoadGenerator(
        {"rest/default": lambda: (2.5, None), "grpc/stable": lambda: (3.5, 2), "flaky": flaky},
        rate=400,
        max_requests=60,
        max_seconds=10,
    )
    report = generator.wait()
    assert report.total == 60
    by_target = report.by_target()
    assert {k: len(v) for k, v in by_target.items()} == {
        "rest/default": 20,
        "grpc/stable": 20,
        "flaky": 20,
    }
    assert len(report.failures) == 4
    assert all("reset by peer" in (s.error or "") for s in report.failures)
    assert report.values("grpc/stable") == {3.5}
    assert {s.version for s in by_target["grpc/stable"]} == {2}
    assert "request cap 60" in report.stop_reason
    assert "4 failed" in report.summary()


def test_the_time_cap_stops_the_generator() -> None:
    """max_seconds bounds a run even when the request cap is far away."""
    generator = LoadGenerator(
        {"t": lambda: (1.0, None)}, rate=100, max_seconds=0.3, max_requests=1000
    )
    report = generator.wait()
    assert "time cap" in report.stop_reason
    # At most rate x time (plus one tick); how many fit below that depends on the machine's load.
    assert 1 <= report.total <= 35
    assert report.stopped_at - report.started_at < 2.0


def test_stop_returns_early_and_waits_for_requests_in_flight() -> None:
    """stop() ends scheduling at once; every request sent is in the report."""
    generator = LoadGenerator({"t": lambda: (1.0, None)}, rate=50, max_seconds=60).start()
    threading.Event().wait(0.2)
    report = generator.stop()
    assert report.stop_reason == "stopped by the caller"
    assert 5 <= report.total <= 15
    assert report.duration_s < 5


def test_hard_caps_hold_whatever_is_asked() -> None:
    """Seconds, requests and rate are capped regardless of the arguments."""
    generator = LoadGenerator({"t": lambda: (1.0, None)}, rate=500, max_seconds=10_000)
    assert generator.max_seconds == HARD_MAX_SECONDS
    assert generator.max_requests == HARD_MAX_REQUESTS
    with pytest.raises(UsageError):
        LoadGenerator({"t": lambda: (1.0, None)}, rate=10_000)
    with pytest.raises(UsageError):
        LoadGenerator({})


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:8501", "127.0.0.1:8500", "localhost:1", "[::1]:9"]
)
def test_loopback_addresses_are_accepted(address: str) -> None:
    """Loopback in URL or host:port form passes."""
    check_loopback(address)


@pytest.mark.parametrize(
    "address", ["http://10.0.0.1:8501", "192.168.1.2:8500", "http://example.org"]
)
def test_other_addresses_are_refused(address: str) -> None:
    """Load never leaves the machine."""
    with pytest.raises(UsageError, match="loopback"):
        check_loopback(address)


def test_windows_and_percentiles() -> None:
    """Latency percentiles are nearest-rank over successful samples in a time window."""
    report = LoadReport(
        samples=[Sample("t", float(i), latency_s=i / 1000, ok=i != 3) for i in range(1, 11)],
        started_at=0.0,
        stopped_at=10.0,
    )
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([], 0.99) == 0.0
    assert report.latency_p(0.99) == 0.010
    window = report.window(2.0, 5.0)
    assert [s.sent_at for s in window] == [2.0, 3.0, 4.0]
    assert report.latency_p(0.99, window) == 0.004
    first = report.first_with(lambda s: not s.ok)
    assert first is not None and first.sent_at == 3.0


def test_first_value_reads_rest_answers() -> None:
    """The first number of predictions/outputs tells the math apart."""
    assert first_value({"predictions": [2.5, 3.0]}) == 2.5
    assert first_value({"outputs": [[4.0]]}) == 4.0
    assert first_value({"predictions": [{"a": 1}]}) is None
    assert first_value({"other": 1}) is None


def _leg(rate: float = 200, max_seconds: float = 10) -> LoadGenerator:
    return LoadGenerator({"rest/default": lambda: (2.5, None)}, rate=rate, max_seconds=max_seconds)


def test_a_relay_hands_over_without_a_gap_and_reports_every_leg() -> None:
    """Legs handed over at 'step' boundaries: one report, sorted, no gap longer than a few
    request intervals at a handover, stopped by the caller."""
    relay = LoadRelay(_leg).start()
    for _ in range(2):
        time.sleep(0.15)
        relay.handover()
    time.sleep(0.15)
    report = relay.stop()
    assert len(relay.legs) == 3
    assert report.stop_reason == "stopped by the caller"
    assert report.failures == []
    assert report.total >= 3 * 20
    times = [s.sent_at for s in report.samples]
    assert times == sorted(times)
    for before, after in itertools.pairwise(relay.legs):  # the next leg runs before one stops
        assert after.report.started_at <= before.report.stopped_at
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5
    assert report.started_at == relay.legs[0].report.started_at
    relay.handover()  # stopped: nothing more starts
    assert len(relay.legs) == 3


def test_a_leg_that_ended_at_its_cap_is_named_in_the_stop_reason() -> None:
    relay = LoadRelay(lambda: _leg(max_seconds=0.1)).start()
    time.sleep(0.3)
    relay.handover()
    report = relay.stop()
    assert report.stop_reason.startswith("leg 1: ") and "cap" in report.stop_reason
    assert "leg 2" not in report.stop_reason


def test_a_relay_is_bounded_in_legs_and_runs_once() -> None:
    relay = LoadRelay(_leg, max_legs=2).start()
    try:
        relay.handover()
        with pytest.raises(UsageError, match="at most 2 legs"):
            relay.handover()
        with pytest.raises(UsageError, match="already ran"):
            relay.start()
    finally:
        relay.stop()
