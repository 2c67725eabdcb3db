"""Reading the servers' Prometheus metrics: scrapes, windows between two scrapes, quantiles.

The runtime (and upstream TF Serving) exposes, per model, ``:tensorflow:serving:request_count``
by ``status`` and the ``:tensorflow:serving:request_latency`` histogram in microseconds by API and
entrypoint. Neither carries a version label, so a window *per version* comes from the scrape
targets that serve that version (a canary replica, a side instance): :func:`window` subtracts two
scrapes of one target, :func:`merge` adds targets up.

Parsing uses ``prometheus_client``'s text parser; everything else is pure and works on captured
pages (the unit tests use real pages of the runtime).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from tfstack.errors import StackError

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
OK_STATUS = "OK"


@dataclass(frozen=True)
class Histogram:
    """A latency histogram: upper bounds in microseconds (last is +Inf) and cumulative counts."""

    bounds: tuple[float, ...] = ()
    cumulative: tuple[float, ...] = ()
    total_micros: float = 0.0

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def plus(self, other: Histogram) -> Histogram:
        """Bucket-wise sum (histograms of one metric share their bounds)."""
        if not self.bounds:
            return other
        if not other.bounds:
            return self
        if other.bounds != self.bounds:
            raise StackError(
                "latency histograms with different buckets cannot be added",
                hint="scrape servers running the same runtime version",
            )
        summed = tuple(a + b for a, b in zip(self.cumulative, other.cumulative, strict=True))
        return Histogram(self.bounds, summed, self.total_micros + other.total_micros)

    def minus(self, earlier: Histogram) -> Histogram:
        """This histogram since ``earlier``; a reset counter (a restart) counts from zero."""
        if not earlier.bounds or earlier.bounds != self.bounds or earlier.count > self.count:
            return self
        delta = tuple(
            max(0.0, a - b) for a, b in zip(self.cumulative, earlier.cumulative, strict=True)
        )
        return Histogram(self.bounds, delta, max(0.0, self.total_micros - earlier.total_micros))

    def quantile_ms(self, q: float) -> float | None:
        """The q-quantile in milliseconds, interpolated as Prometheus' histogram_quantile does.

        None for an empty histogram. A quantile in the +Inf bucket is the highest finite bound.
        """
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        previous_bound, previous_count = 0.0, 0.0
        for bound, count in zip(self.bounds, self.cumulative, strict=True):
            if count >= rank and count > previous_count:
                if math.isinf(bound):
                    return previous_bound / 1000.0
                fraction = (rank - previous_count) / (count - previous_count)
                return (previous_bound + (bound - previous_bound) * fraction) / 1000.0
            previous_bound, previous_count = bound, count
        return previous_bound / 1000.0


@dataclass(frozen=True)
class ModelCounters:
    """One model's counters in one scrape: requests by status and the latency histogram."""

    by_status: Mapping[str, float] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)

    @property
    def requests(self) -> float:
        return sum(self.by_status.values())

    @property
    def errors(self) -> float:
        return sum(v for status, v in self.by_status.items() if status != OK_STATUS)


@dataclass(frozen=True)
class Scrape:
    """One target's metrics page, parsed; ``at`` is a monotonic time in seconds."""

    target: str
    at: float
    models: Mapping[str, ModelCounters]


@dataclass(frozen=True)
class Window:
    """Traffic of one model between two scrapes (summed over the targets merged into it)."""

    seconds: float
    requests: float
    errors: float
    latency: Histogram

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def quantile_ms(self, q: float) -> float | None:
        return self.latency.quantile_ms(q)


EMPTY_WINDOW = Window(0.0, 0.0, 0.0, Histogram())


def _bound(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise StackError(f"{where}: histogram bucket le={text!r} is not a number") from exc


def parse_metrics(text: str, *, target: str = "", at: float = 0.0) -> Scrape:
    """Parse a metrics page (text exposition format) into per-model counters.

    Raises :class:`StackError` naming ``target`` when the page is not Prometheus text.
    """
    where = target or "metrics page"
    status: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise StackError(
            f"{where}: not a Prometheus text page ({exc})",
            hint="check monitoring.path and that the target is a tfstack serving replica",
        ) from exc
    for family in families:
        if family.name == REQUEST_COUNT:
            for sample in family.samples:
                if sample.name not in (REQUEST_COUNT, REQUEST_COUNT + "_total"):
                    continue
                model = sample.labels.get("model_name", "")
                by_status = status.setdefault(model, {})
                key = sample.labels.get("status", "")
                by_status[key] = by_status.get(key, 0.0) + sample.value
        elif family.name == REQUEST_LATENCY:
            for sample in family.samples:
                model = sample.labels.get("model_name", "")
                if sample.name == REQUEST_LATENCY + "_bucket":
                    le = _bound(sample.labels.get("le", ""), where)
                    cells = buckets.setdefault(model, {})
                    cells[le] = cells.get(le, 0.0) + sample.value
                elif sample.name == REQUEST_LATENCY + "_sum":
                    sums[model] = sums.get(model, 0.0) + sample.value
    models: dict[str, ModelCounters] = {}
    for model in sorted(set(status) | set(buckets)):
        cells = buckets.get(model, {})
        bounds = tuple(sorted(cells))
        histogram = Histogram(bounds, tuple(cells[b] for b in bounds), sums.get(model, 0.0))
        models[model] = ModelCounters(dict(status.get(model, {})), histogram)
    return Scrape(target, at, models)


def window(earlier: Scrape, later: Scrape, model: str) -> Window:
    """One model's traffic on one target between two scrapes (a restart counts from zero)."""
    if later.at < earlier.at:
        raise StackError(f"{later.target}: scrapes out of order ({earlier.at} > {later.at})")
    after = later.models.get(model, ModelCounters())
    before = earlier.models.get(model, ModelCounters())
    reset = after.requests < before.requests or any(
        after.by_status.get(k, 0.0) < v for k, v in before.by_status.items()
    )
    if reset:
        before = ModelCounters()
    requests_ = after.requests - before.requests
    errors = after.errors - before.errors
    return Window(later.at - earlier.at, requests_, errors, after.latency.minus(before.latency))


def merge(windows: Iterable[Window]) -> Window:
    """Windows of several targets over the same interval, added up (seconds: the longest)."""
    result = EMPTY_WINDOW
    for w in windows:
        result = Window(
            max(result.seconds, w.seconds),
            result.requests + w.requests,
            result.errors + w.errors,
            result.latency.plus(w.latency),
        )
    return result


def scrape(url: str, *, at: float, timeout: float = 5.0) -> Scrape:
    """GET a metrics page and parse it; errors name the URL and say what to check."""
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise StackError(
            f"cannot read metrics from {url}: {exc}",
            hint="is the stack up (`./tfstack status`) and monitoring.enabled true?",
        ) from exc
    if response.status_code != 200:
        raise StackError(
            f"metrics at {url} answered HTTP {response.status_code}",
            hint="check monitoring.path in the spec",
        )
    return parse_metrics(response.text, target=url, at=at)
