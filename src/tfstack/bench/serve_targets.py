"""The targets ``bench serve`` judges, as data: one :class:`Target` per row of the printed table
(name, targets.md goal, how the figure is measured and judged, the reference measured in the same
run), read by :func:`build_rows`; :func:`print_table` prints the rows beside each server.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.table import Table

from tfstack.bench.loadgen import format_ms
from tfstack.bench.serve_load import LoadResult
from tfstack.bench.serve_measure import GRPC_CONCURRENCY, THROUGHPUT_CONNECTIONS, Figures
from tfstack.bench.serve_reference import Reference
from tfstack.bench.serve_servers import BATCH_CLIENTS, BATCH_TIMEOUT_MICROS

# targets.md goals, printed beside each figure.
REST_RPS_TARGET = 3000.0
REST_P99_TARGET_MS = 10.0
GRPC_RPS_TARGET = 2500.0
GRPC_P99_TARGET_MS = 20.0
REST_OVERHEAD_TARGET = 1.3
GRPC_OVERHEAD_TARGET = 1.1
FIRST_REQUEST_TARGET = 1.5
IDLE_RSS_TARGET_MB = 550.0
BATCHING_GAIN_TARGET = 1.2
CLIENT_BOUND_CORES = 0.9
"""A load client using more than this many cores may be what limits the figure."""


def _ms(value: float | None) -> str:
    return format_ms(value, 2)


def _first_error(*results: LoadResult, separator: str) -> str:
    error = next((result.first_error for result in results if result.first_error), "")
    return f"{separator}first error: {error[:80]}" if error else ""


class Figure(Protocol):
    """How one target is measured (:meth:`text`) and judged (:meth:`met`: None = no verdict)."""

    def text(self, figures: Figures) -> str: ...

    def met(self, figures: Figures) -> bool | None: ...


@dataclass(frozen=True)
class Throughput:
    """A load run's req/s, p50/p99, errors and the client's CPU; met at >= ``rps`` req/s with
    p99 <= ``p99_ms`` and no error."""

    key: str
    rps: float
    p99_ms: float

    def text(self, figures: Figures) -> str:
        result = figures.loads.get(self.key)
        if result is None:
            return "n/a"
        flag = " (client-bound?)" if result.client_cpu > CLIENT_BOUND_CORES else ""
        parts = [
            f"{result.rps:,.0f} req/s",
            f"p50 {_ms(result.percentile(0.5))}",
            f"p99 {_ms(result.percentile(0.99))}",
            f"{result.errors} errors",
            f"client {result.client_cpu:.2f} cores{flag}",
        ]
        return ", ".join(parts) + _first_error(result, separator=", ")

    def met(self, figures: Figures) -> bool | None:
        result = figures.loads.get(self.key)
        if result is None:
            return None
        return (
            result.rps >= self.rps and result.percentile(0.99) <= self.p99_ms and result.errors == 0
        )


@dataclass(frozen=True)
class VersusInProcess:
    """One client at a time: p50/p99 and p50 over the in-process p50; met when that ratio is at
    most ``limit`` with no error (no ``limit``: context only, no verdict)."""

    key: str
    reference: Reference
    limit: float | None = None

    def text(self, figures: Figures) -> str:
        result = figures.loads.get(self.key)
        if result is None:
            return "n/a"
        p50 = result.percentile(0.5)
        return (
            f"p50 {_ms(p50)}, p99 {_ms(result.percentile(0.99))} "
            f"= {p50 / self.reference.p50:.2f}x in-process ({result.errors} errors)"
            + _first_error(result, separator="; ")
        )

    def met(self, figures: Figures) -> bool | None:
        result = figures.loads.get(self.key)
        if result is None or self.limit is None:
            return None
        return result.percentile(0.5) <= self.limit * self.reference.p50 and result.errors == 0


@dataclass(frozen=True)
class FirstRequest:
    """The first request after AVAILABLE (``attribute`` of :class:`Figures`) over the warm p50 of
    load ``key``; met at most :data:`FIRST_REQUEST_TARGET` times."""

    attribute: str
    key: str

    def _pair(self, figures: Figures) -> tuple[float, float] | None:
        first: float | None = getattr(figures, self.attribute)
        result = figures.loads.get(self.key)
        if first is None or result is None:
            return None
        return first, result.percentile(0.5)

    def text(self, figures: Figures) -> str:
        pair = self._pair(figures)
        if pair is None:
            return "n/a"
        first, p50 = pair
        return f"first {_ms(first)} vs warm p50 {_ms(p50)} = {first / p50:.2f}x"

    def met(self, figures: Figures) -> bool | None:
        pair = self._pair(figures)
        if pair is None:
            return None
        first, p50 = pair
        return bool(first <= FIRST_REQUEST_TARGET * p50)


@dataclass(frozen=True)
class BatchingGain:
    """Concurrent ResNet-50 with batching off and on; met at :data:`BATCHING_GAIN_TARGET` times
    the throughput with p99 <= :data:`REST_OVERHEAD_TARGET` x ``bound_ms`` and no error."""

    bound_ms: float  # batch timeout + one in-process batch

    def _pair(self, figures: Figures) -> tuple[LoadResult, LoadResult] | None:
        off, on = figures.loads.get("resnet_batch_off"), figures.loads.get("resnet_batch_on")
        return None if off is None or on is None else (off, on)

    def text(self, figures: Figures) -> str:
        pair = self._pair(figures)
        if pair is None:
            return "n/a"
        off, on = pair
        gain = on.rps / off.rps if off.rps else float("nan")
        return (
            f"off {off.rps:.1f} req/s (p99 {_ms(off.percentile(0.99))}, {off.errors} errors); "
            f"on {on.rps:.1f} req/s (p99 {_ms(on.percentile(0.99))}, {on.errors} errors); "
            f"gain {gain:.2f}x; p99 on / bound {on.percentile(0.99) / self.bound_ms:.2f}"
            + _first_error(off, on, separator="; ")
        )

    def met(self, figures: Figures) -> bool | None:
        pair = self._pair(figures)
        if pair is None or not pair[0].rps:
            return None
        off, on = pair
        return (
            on.rps >= BATCHING_GAIN_TARGET * off.rps
            and on.percentile(0.99) <= self.bound_ms * REST_OVERHEAD_TARGET
            and on.errors == 0
            and off.errors == 0
        )


@dataclass(frozen=True)
class IdleRss:
    """Idle resident memory with the tiny models; met at most :data:`IDLE_RSS_TARGET_MB`."""

    def text(self, figures: Figures) -> str:
        return "n/a" if figures.idle_rss_mb is None else f"{figures.idle_rss_mb:.0f} MB"

    def met(self, figures: Figures) -> bool | None:
        return None if figures.idle_rss_mb is None else figures.idle_rss_mb <= IDLE_RSS_TARGET_MB


@dataclass(frozen=True)
class Target:
    """One row: what is measured, its goal, how (``figure``), and the same run's reference."""

    name: str
    goal: str
    figure: Figure
    reference: str = ""


def serve_targets(small: Reference, resnet: Reference, batch: Reference) -> tuple[Target, ...]:
    """The table, given the in-process references (half_plus_two, ResNet-50, one batch of
    :data:`BATCH_CLIENTS` ResNet-50 images) measured in the same run."""
    batch_bound = BATCH_TIMEOUT_MICROS / 1000 + batch.p50
    first_call = "in-process first call without warmup"
    return (
        Target(
            f"#1 REST half_plus_two, {THROUGHPUT_CONNECTIONS} connections, server on one core",
            f">= {REST_RPS_TARGET:,.0f} req/s, p99 <= {REST_P99_TARGET_MS:.0f} ms, 0 errors",
            Throughput("small_rest_load", REST_RPS_TARGET, REST_P99_TARGET_MS),
            f"in-process call p50 {_ms(small.p50)} on one core "
            f"(at most {1000 / small.p50:,.0f} calls/s)",
        ),
        Target(
            f"#3 gRPC half_plus_two, {GRPC_CONCURRENCY} concurrent calls, server on one core",
            f">= {GRPC_RPS_TARGET:,.0f} req/s, p99 <= {GRPC_P99_TARGET_MS:.0f} ms",
            Throughput("small_grpc_load", GRPC_RPS_TARGET, GRPC_P99_TARGET_MS),
            "Python gRPC unary echo, one core: ~2,700-4,300 req/s (targets.md)",
        ),
        Target(
            "half_plus_two REST, one client, p50 vs in-process",
            "(no target; context for #1)",
            VersusInProcess("small_rest_seq", small),
            f"in-process p50 {_ms(small.p50)}",
        ),
        Target(
            "half_plus_two gRPC, one client, p50 vs in-process",
            "(no target; context for #3)",
            VersusInProcess("small_grpc_seq", small),
            f"in-process p50 {_ms(small.p50)}",
        ),
        Target(
            "#2 ResNet-50 batch 1 REST (b64 JPEG), one client",
            f"p50 <= {REST_OVERHEAD_TARGET}x in-process p50",
            VersusInProcess("resnet_rest_seq", resnet, REST_OVERHEAD_TARGET),
            f"in-process p50 {_ms(resnet.p50)} (all cores)",
        ),
        Target(
            "#2 ResNet-50 batch 1 gRPC (make_tensor_proto), one client",
            f"p50 <= {GRPC_OVERHEAD_TARGET}x in-process p50",
            VersusInProcess("resnet_grpc_seq", resnet, GRPC_OVERHEAD_TARGET),
            f"in-process p50 {_ms(resnet.p50)} (all cores)",
        ),
        Target(
            "#5 first REST request after AVAILABLE, ResNet-50",
            f"<= {FIRST_REQUEST_TARGET}x warm p50",
            FirstRequest("resnet_first_ms", "resnet_rest_seq"),
            f"{first_call} {_ms(resnet.first_ms)}",
        ),
        Target(
            "#5 first REST request after AVAILABLE, half_plus_two",
            f"<= {FIRST_REQUEST_TARGET}x warm p50",
            FirstRequest("small_first_ms", "small_rest_seq"),
            f"{first_call} {_ms(small.first_ms)}",
        ),
        Target(
            f"#9 {BATCH_CLIENTS} concurrent ResNet-50 gRPC clients, batching on vs off",
            f">= {BATCHING_GAIN_TARGET}x throughput; p99 <= batch_timeout + one batch",
            BatchingGain(batch_bound),
            f"one batch of {BATCH_CLIENTS} in-process p50 {_ms(batch.p50)}; bound = "
            f"{BATCH_TIMEOUT_MICROS / 1000:.0f} ms timeout + that = {_ms(batch_bound)} "
            f"(met: p99 <= {REST_OVERHEAD_TARGET}x bound)",
        ),
        Target(
            "#8 idle RSS, half_plus_two + half_plus_three",
            f"<= {IDLE_RSS_TARGET_MB:.0f} MB",
            IdleRss(),
            "TF + tiny model: 528 MB (targets.md)",
        ),
    )


@dataclass
class Row:
    metric: str
    target: str
    values: list[str]
    met: list[bool | None]
    reference: str = ""


def build_rows(
    all_figures: list[Figures], small_ref: Reference, resnet_ref: Reference, batch_ref: Reference
) -> list[Row]:
    """Each target of :func:`serve_targets` measured and judged on every server's figures."""
    return [
        Row(
            target.name,
            target.goal,
            [target.figure.text(figures) for figures in all_figures],
            [target.figure.met(figures) for figures in all_figures],
            target.reference,
        )
        for target in serve_targets(small_ref, resnet_ref, batch_ref)
    ]


def print_table(rows: list[Row], names: list[str]) -> None:
    table = Table(title="invoke bench serve", show_lines=True)
    table.add_column("figure", overflow="fold", max_width=34)
    table.add_column("target", overflow="fold", max_width=26)
    for name in names:
        table.add_column(name, overflow="fold")
    table.add_column("reference (same run)", overflow="fold", max_width=30)
    for row in rows:
        cells = []
        for value, ok in zip(row.values, row.met, strict=True):
            mark = "" if ok is None else (" [green]met[/]" if ok else " [red]MISSED[/]")
            cells.append(f"{value}{mark}")
        table.add_row(row.metric, row.target, *cells, row.reference)
    Console(width=max(160, shutil.get_terminal_size().columns)).print(table)
