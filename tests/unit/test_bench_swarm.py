"""bench swarm's pure parts: engine timestamps, and what a node kill cost the clients."""

from __future__ import annotations

from tfstack.bench.loadgen import LoadReport, Sample
from tfstack.bench.swarm import Failover, parse_timestamp


def test_engine_timestamps_keep_their_fraction_and_zone() -> None:
    """Swarm and the engine write RFC 3339 in UTC with nanoseconds (or none)."""
    whole = parse_timestamp("2026-12-03T09:28:12Z")
    assert whole == 1796290092.0
    assert abs(parse_timestamp("2026-12-03T09:28:12.123456789Z") - whole - 0.123456) < 1e-6
    assert parse_timestamp("2026-12-03T09:28:12.5Z") - whole == 0.5


def test_failover_counts_slow_and_failed_requests_after_the_kill_only() -> None:
    """Before the kill nothing counts; after it, the last slow or failed request's send time."""
    samples = [
        Sample("rest/default", 99.0, 2.0, True),  # slow, but before the kill at 100
        Sample("rest/default", 100.2, 1.01, True),  # met the dead task, retried
        Sample("rest/default", 101.0, 0.005, True),
        Sample("rest/stable", 103.5, 0.004, False, error="ReadTimeout"),
        Sample("rest/default", 104.0, 0.006, True),
    ]
    failover = Failover(LoadReport(samples=samples), 100.0, 5.8, 24.0, [])
    assert failover.slow == 1
    assert failover.door_s == 3.5
    quiet = Failover(LoadReport(samples=samples[2:3]), 100.0, None, None, [])
    assert (quiet.slow, quiet.door_s) == (0, 0.0)
