"""tfstack.serving.metrics: pages of the runtime parsed, windows between scrapes, quantiles.

The pages under data/metrics were rendered by the runtime's own ``modelserver.metrics.Metrics``
after known traffic: 40 then 200 more predicts of half_plus_two (3 failed, 10 of them 20-30 ms),
gRPC status calls, and 25 predicts of half_plus_three; ``replica-restarted`` is a fresh server.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tfstack.errors import StackError
from tfstack.serving.metrics import (
    EMPTY_WINDOW,
    Histogram,
    Scrape,
    merge,
    parse_metrics,
    window,
)

DATA = Path(__file__).parent / "data" / "metrics"


def page(name: str, at: float) -> Scrape:
    return parse_metrics((DATA / f"{name}.txt").read_text(encoding="utf-8"), target=name, at=at)


def test_parse_counts_requests_by_model_and_status() -> None:
    """Request counters are read per model and status, latency summed over APIs."""
    after = page("replica-after", 10.0)
    two = after.models["half_plus_two"]
    assert two.by_status == {"OK": 247.0, "INVALID_ARGUMENT": 3.0}
    assert two.requests == 250 and two.errors == 3
    assert two.latency.count == 250  # predicts and GetModelStatus calls alike
    assert math.isinf(two.latency.bounds[-1])
    assert after.models["half_plus_three"].requests == 25


def test_window_is_the_difference_of_two_scrapes() -> None:
    """A window holds only the traffic between the two scrapes, over their time difference."""
    w = window(page("replica-before", 0.0), page("replica-after", 20.0), "half_plus_two")
    assert (w.seconds, w.requests, w.errors) == (20.0, 200.0, 3.0)
    assert w.latency.count == 200
    assert w.rate == 10.0
    assert w.error_rate == pytest.approx(0.015)


def test_window_quantiles_see_the_slow_tail() -> None:
    """p50 lies among the 0.8-1.5 ms requests, p99 among the 20-30 ms ones (bucket precision)."""
    w = window(page("replica-before", 0.0), page("replica-after", 20.0), "half_plus_two")
    p50, p99 = w.quantile_ms(0.5), w.quantile_ms(0.99)
    assert p50 is not None and 0.5 < p50 < 1.6
    assert p99 is not None and 20.8 < p99 < 37.5  # the (20.8 ms, 37.5 ms] bucket


def test_restart_counts_from_zero() -> None:
    """Counters lower than before mean a restart: the later page is the window on its own."""
    w = window(page("replica-after", 0.0), page("replica-restarted", 5.0), "half_plus_two")
    assert (w.requests, w.errors, w.latency.count) == (5.0, 0.0, 5.0)


def test_model_absent_from_a_page_is_an_empty_window() -> None:
    """A model without series (no traffic yet) has a zero window and no quantile."""
    w = window(page("replica-before", 0.0), page("replica-after", 1.0), "nothing_here")
    assert (w.requests, w.error_rate, w.quantile_ms(0.99)) == (0.0, None, None)


def test_merge_adds_targets() -> None:
    """Merging two replicas' windows adds counts and buckets."""
    one = window(page("replica-before", 0.0), page("replica-after", 20.0), "half_plus_two")
    both = merge([one, one])
    assert (both.requests, both.errors, both.latency.count) == (400.0, 6.0, 400.0)
    assert both.quantile_ms(0.99) == one.quantile_ms(0.99)
    assert merge([]) == EMPTY_WINDOW


def test_quantile_interpolates_like_histogram_quantile() -> None:
    """Linear interpolation inside the bucket, as Prometheus' histogram_quantile does."""
    h = Histogram((1000.0, 2000.0, math.inf), (50.0, 100.0, 100.0))
    assert h.quantile_ms(0.5) == pytest.approx(1.0)
    assert h.quantile_ms(0.75) == pytest.approx(1.5)
    tail = Histogram((1000.0, math.inf), (90.0, 100.0))
    assert tail.quantile_ms(0.99) == 1.0  # in +Inf: the highest finite bound


def test_out_of_order_scrapes_are_refused() -> None:
    """A later scrape taken before the earlier one is a programming error, reported as such."""
    with pytest.raises(StackError, match="out of order"):
        window(page("replica-before", 5.0), page("replica-after", 1.0), "half_plus_two")


def test_garbage_page_names_the_target() -> None:
    """A page that is not Prometheus text is refused with the target and a hint."""
    with pytest.raises(StackError, match="http://x/metrics: not a Prometheus text page") as info:
        parse_metrics("<html>{{{ nope", target="http://x/metrics")
    assert info.value.hint is not None and "monitoring.path" in info.value.hint
