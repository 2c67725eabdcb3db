"""A bounded load generator for rollout proofs and ``invoke bench rollout``.

It sends requests at a fixed rate (about 50 req/s) round-robin over *targets* (REST and gRPC, each
unlabelled and via a label such as ``stable``), from a small thread pool so a slow answer never
delays the schedule. Every request is recorded: when it was sent, how long it took, whether it
failed (and why), the first output value (which tells the math, hence the version, apart) and,
over gRPC, the version the server says answered.

Hard limits, whatever the caller asks: loopback addresses only, at most
:data:`HARD_MAX_SECONDS` seconds, :data:`HARD_MAX_REQUESTS` requests and :data:`HARD_MAX_RATE`
req/s. The generator stops by itself at the first limit reached.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tfstack.errors import UsageError
from tfstack.serving.client import GrpcClient, ModelRef, RestClient
from tfstack.serving.tensors import rest_body_to_grpc, signature_inputs

HARD_MAX_SECONDS = 120.0
HARD_MAX_REQUESTS = 12_000
HARD_MAX_RATE = 500.0
CALLER = "stopped by the caller"  # the stop reason of a generator that ran until stop()
DEFAULT_RATE = 50.0
REQUEST_TIMEOUT_S = 10.0

Answer = tuple[float | None, int | None]
"""(first output value, version the server reported or None)."""
Sender = Callable[[], Answer]


@dataclass(frozen=True)
class Sample:
    """One request: target name, send time (``time.monotonic``), latency, result."""

    target: str
    sent_at: float
    latency_s: float
    ok: bool
    value: float | None = None
    version: int | None = None
    error: str | None = None


def percentile(values: Sequence[float], fraction: float, *, empty: float = 0.0) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 = p99); ``empty`` for no values."""
    if not values:
        return empty
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def format_ms(milliseconds: float | None, digits: int = 1) -> str:
    """A duration in milliseconds as ``"12.3 ms"`` (``digits`` decimals); ``"n/a"`` for None/NaN."""
    if milliseconds is None or math.isnan(milliseconds):
        return "n/a"
    return f"{milliseconds:.{digits}f} ms"


@dataclass
class LoadReport:
    """Everything the generator recorded, with the accounting the tests and benchmarks need."""

    samples: list[Sample] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0
    stop_reason: str = ""

    @property
    def total(self) -> int:
        return len(self.samples)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    @property
    def duration_s(self) -> float:
        return max(self.stopped_at - self.started_at, 0.0)

    @property
    def rate(self) -> float:
        return self.total / self.duration_s if self.duration_s > 0 else 0.0

    def by_target(self) -> dict[str, list[Sample]]:
        grouped: dict[str, list[Sample]] = {}
        for sample in self.samples:
            grouped.setdefault(sample.target, []).append(sample)
        return grouped

    def window(self, start: float | None = None, end: float | None = None) -> list[Sample]:
        """Samples sent in [start, end) (monotonic times; None = open)."""
        return [
            s
            for s in self.samples
            if (start is None or s.sent_at >= start) and (end is None or s.sent_at < end)
        ]

    def latency_p(self, fraction: float, samples: Iterable[Sample] | None = None) -> float:
        chosen = self.samples if samples is None else list(samples)
        return percentile([s.latency_s for s in chosen if s.ok], fraction)

    def values(self, target: str | None = None) -> set[float]:
        return {
            s.value
            for s in self.samples
            if s.ok and s.value is not None and (target is None or s.target == target)
        }

    def first_with(self, predicate: Callable[[Sample], bool]) -> Sample | None:
        matching = [s for s in self.samples if predicate(s)]
        return min(matching, key=lambda s: s.sent_at) if matching else None

    def summary(self) -> str:
        counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.by_target().items()))
        failed = self.failures
        text = (
            f"{self.total} requests in {self.duration_s:.1f}s ({self.rate:.1f}/s; {counts}); "
            f"{len(failed)} failed; p50 {format_ms(self.latency_p(0.5) * 1000)}, "
            f"p99 {format_ms(self.latency_p(0.99) * 1000)}; stopped: {self.stop_reason}"
        )
        for sample in failed[:5]:
            text += f"\n  failed {sample.target} at +{sample.sent_at - self.started_at:.2f}s: "
            text += f"{sample.error}"
        return text


def check_loopback(address: str) -> None:
    """Refuse anything but 127.0.0.0/8, ::1 or localhost (URLs or host:port)."""
    host = urlsplit(address).hostname if "://" in address else address.rsplit(":", 1)[0]
    host = (host or "").strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise UsageError(
        f"the load generator only talks to loopback addresses, not {address!r}",
        hint="point it at a stack bound to 127.0.0.1",
    )


class LoadGenerator:
    """Fixed-rate, bounded load over named senders; ``with`` starts it, leaving stops it."""

    def __init__(
        self,
        senders: Mapping[str, Sender],
        *,
        rate: float = DEFAULT_RATE,
        max_seconds: float = 90.0,
        max_requests: int | None = None,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not senders:
            raise UsageError("the load generator needs at least one target")
        if not 0 < rate <= HARD_MAX_RATE:
            raise UsageError(f"rate must be in (0, {HARD_MAX_RATE:.0f}] req/s, not {rate}")
        self.senders = dict(senders)
        self.rate = rate
        self.max_seconds = min(max_seconds, HARD_MAX_SECONDS)
        wanted = max_requests if max_requests is not None else math.ceil(rate * self.max_seconds)
        self.max_requests = min(wanted, HARD_MAX_REQUESTS)
        self.workers = workers
        self.clock = clock
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- running -------------------------------------------------------------------------------

    def _send(self, name: str, sender: Sender) -> None:
        sent = self.clock()
        try:
            value, version = sender()
        except Exception as exc:
            sample = Sample(name, sent, self.clock() - sent, False, error=_short(exc))
        else:
            sample = Sample(name, sent, self.clock() - sent, True, value, version)
        with self._lock:
            self.report.samples.append(sample)

    def _schedule(self) -> None:
        assert self._pool is not None
        names = list(self.senders)
        start = self.report.started_at
        index = 0
        reason = "stopped"
        while True:
            if self._stop.is_set():
                reason = CALLER
                break
            if index >= self.max_requests:
                reason = f"request cap {self.max_requests} reached"
                break
            due = start + index / self.rate
            now = self.clock()
            if due - start >= self.max_seconds or now - start >= self.max_seconds:
                reason = f"time cap {self.max_seconds:.0f}s reached"
                break
            if due > now and self._stop.wait(due - now):
                reason = CALLER
                break
            name = names[index % len(names)]
            self._pool.submit(self._send, name, self.senders[name])
            index += 1
        self.report.stop_reason = reason

    def start(self) -> LoadGenerator:
        if self._thread is not None:
            raise UsageError("this load generator already ran; make a new one")
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="loadgen")
        self.report.started_at = self.clock()
        self._thread = threading.Thread(target=self._schedule, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadReport:
        """Stop scheduling, wait for requests in flight, return the report (sorted by time)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.report.stopped_at = self.clock()
        self.report.samples.sort(key=lambda s: s.sent_at)
        return self.report

    def wait(self) -> LoadReport:
        """Run (starting if needed) until a cap is reached, then return the report."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join()
        return self.stop()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoadRelay:
    """Load for longer than one generator's bounds: legs of :class:`LoadGenerator`, handed over.

    A rollout under load can outlast :data:`HARD_MAX_SECONDS`; a generator that stopped at its
    cap would leave the rest of the rollout unobserved. ``handover()`` (e.g. at every step's
    start) starts the next leg before it stops the current one, so no moment goes without load
    (they overlap for the few milliseconds the stop takes). Each leg keeps every cap, and there
    are at most ``max_legs`` of them: the relay stays bounded too.
    """

    def __init__(self, make_leg: Callable[[], LoadGenerator], *, max_legs: int = 16) -> None:
        self.make_leg = make_leg
        self.max_legs = max_legs
        self.legs: list[LoadGenerator] = []
        self._finished: list[LoadReport] = []

    def start(self) -> LoadRelay:
        if self.legs:
            raise UsageError("this load relay already ran; make a new one")
        self.legs.append(self.make_leg().start())
        return self

    def handover(self) -> None:
        """The next leg takes over from the current one (no-op once stopped)."""
        if not self.legs or len(self._finished) == len(self.legs):
            return
        if len(self.legs) >= self.max_legs:
            raise UsageError(f"a load relay runs at most {self.max_legs} legs")
        current = self.legs[-1]
        self.legs.append(self.make_leg().start())
        self._finished.append(current.stop())

    def stop(self) -> LoadReport:
        """Stop the running leg; every leg's samples in one report (see :attr:`report`)."""
        if self.legs and len(self._finished) < len(self.legs):
            self._finished.append(self.legs[-1].stop())
        return self.report

    @property
    def report(self) -> LoadReport:
        """The legs so far as one report; its stop reason is "stopped by the caller" only if no
        leg ended at a cap (one that did left a gap before the next handover)."""
        reports = [*self._finished, *[leg.report for leg in self.legs[len(self._finished) :]]]
        merged = LoadReport(
            samples=sorted(
                (sample for report in reports for sample in report.samples),
                key=lambda s: s.sent_at,
            ),
            started_at=reports[0].started_at if reports else 0.0,
            stopped_at=reports[-1].stopped_at if reports else 0.0,
        )
        ended = [r.stop_reason for r in self._finished]
        capped = [f"leg {i + 1}: {reason}" for i, reason in enumerate(ended) if reason != CALLER]
        merged.stop_reason = "; ".join(capped) if capped else (CALLER if ended else "")
        return merged


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------------------------
# Real senders: REST and gRPC against a stack on loopback


def first_value(answer: Any) -> float | None:
    """The first number of a REST-style answer (``predictions``/``outputs``, nested)."""
    if isinstance(answer, Mapping):
        for key in ("predictions", "outputs", "results"):
            if key in answer:
                return first_value(answer[key])
        return None
    if isinstance(answer, list):
        return first_value(answer[0]) if answer else None
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        return float(answer)
    return None


def stack_senders(
    model: str,
    *,
    rest_url: str,
    grpc_target: str,
    body: Mapping[str, Any],
    labels: Sequence[str] = ("stable",),
    transports: Sequence[str] = ("rest", "grpc"),
) -> dict[str, Sender]:
    """Senders named ``rest/default``, ``rest/stable``, ``grpc/default``... for one model."""

    check_loopback(rest_url)
    check_loopback(grpc_target)
    refs = {"default": ModelRef(model)} | {label: ModelRef(model, label=label) for label in labels}
    senders: dict[str, Sender] = {}
    local = threading.local()

    def rest_client() -> RestClient:
        client = getattr(local, "rest", None)
        if client is None:
            client = local.rest = RestClient(rest_url, timeout=REQUEST_TIMEOUT_S)
        return client

    if "rest" in transports:
        for name, ref in refs.items():

            def send_rest(ref: ModelRef = ref) -> Answer:
                return first_value(rest_client().predict(ref, body)), None

            senders[f"rest/{name}"] = send_rest
    if "grpc" in transports:
        grpc_client = GrpcClient(grpc_target, timeout=REQUEST_TIMEOUT_S)
        inputs = signature_inputs(grpc_client.metadata(ModelRef(model)), None)
        request = rest_body_to_grpc(body, inputs)
        for name, ref in refs.items():

            def send_grpc(ref: ModelRef = ref) -> Answer:
                answer = grpc_client.predict(ref, request.tensors, signature=request.signature)
                values = [t.values[0] for _, t in sorted(answer.outputs.items()) if t.values]
                value = float(values[0]) if values else None
                return value, answer.version

            senders[f"grpc/{name}"] = send_grpc
    return senders
