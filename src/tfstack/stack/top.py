"""``invoke top``: a live view of a running stack from the servers' own metrics.

Each refresh scrapes every serving replica's metrics page (``monitoring.path`` on its REST port)
and compares it with the previous scrape: per model, requests per second, error rate, p50 and p99
latency (from the histogram buckets), and how many replicas answered. Beside it: the door's view of
the replicas (when the stack has a door) and unfinished rollouts from the journals.

The servers' metrics carry no version label, so rates are per model; the version labels shown are
the spec's. :func:`build_snapshot` and :func:`render_snapshot` are pure; :func:`collect` and
:func:`run_top` do the scraping and the refreshing. ``--once --json`` prints
:meth:`TopSnapshot.to_json` (schema ``tfstack.top/v1``, documented in docs/json-output.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tfstack.errors import StackError, TfstackError
from tfstack.rollout.journal import status_summary
from tfstack.serving.metrics import Scrape, merge, scrape, window
from tfstack.spec import StackSpec, load_spec
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.plan import Loaded

SCHEMA = "tfstack.top/v1"
MIN_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Target:
    """One replica's metrics page."""

    name: str
    url: str


@dataclass(frozen=True)
class Scrapes:
    """One round of scrapes: pages by replica name, and why the others could not be read."""

    pages: Mapping[str, Scrape]
    errors: Mapping[str, str]
    urls: Mapping[str, str]


@dataclass(frozen=True)
class ModelRow:
    """One model over the last interval, all replicas added up."""

    name: str
    requests_per_second: float
    requests: float
    errors: float
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None
    replicas_reporting: int
    labels: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests_per_second": round(self.requests_per_second, 3),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "replicas_reporting": self.replicas_reporting,
            "labels": dict(self.labels),
        }


@dataclass(frozen=True)
class TopSnapshot:
    """What ``top`` shows at one moment."""

    project: str
    at: str
    window_seconds: float
    models: tuple[ModelRow, ...]
    replicas: tuple[dict[str, Any], ...]
    door: Mapping[str, Any] | None
    rollouts: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "project": self.project,
            "at": self.at,
            "window_seconds": round(self.window_seconds, 3),
            "models": [m.to_json() for m in self.models],
            "replicas": [dict(r) for r in self.replicas],
            "door": dict(self.door) if self.door is not None else None,
            "rollouts": dict(self.rollouts) if self.rollouts is not None else None,
        }


def build_snapshot(
    spec: StackSpec,
    earlier: Scrapes,
    later: Scrapes,
    *,
    at: str,
    door: Mapping[str, Any] | None = None,
    rollouts: Mapping[str, Any] | None = None,
) -> TopSnapshot:
    """Per-model rows from two rounds of scrapes (pure); a replica missing from either is left
    out of the rates and listed with its error."""
    both = sorted(set(earlier.pages) & set(later.pages))
    seconds = max((later.pages[n].at - earlier.pages[n].at for n in both), default=0.0)
    rows = []
    for model in spec.models:
        windows = [window(earlier.pages[n], later.pages[n], model.name) for n in both]
        total = merge(windows)
        reporting = sum(1 for n in both if model.name in later.pages[n].models)
        rows.append(
            ModelRow(
                model.name,
                total.rate,
                total.requests,
                total.errors,
                total.error_rate,
                total.quantile_ms(0.5),
                total.quantile_ms(0.99),
                reporting,
                dict(model.labels),
            )
        )
    replicas = tuple(
        {
            "name": name,
            "metrics_url": later.urls.get(name, earlier.urls.get(name, "")),
            "up": name in both,
            "error": later.errors.get(name) or earlier.errors.get(name),
        }
        for name in sorted(set(later.urls) | set(earlier.urls))
    )
    return TopSnapshot(spec.project, at, seconds, tuple(rows), replicas, door, rollouts)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_snapshot(snapshot: TopSnapshot) -> RenderableType:
    """The terminal view (pure): a model table, the replicas, the door, rollouts."""
    table = Table(
        title=f"{snapshot.project}: last {snapshot.window_seconds:.1f} s ({snapshot.at})",
        title_justify="left",
    )
    for column in ("model", "req/s", "errors", "p50 ms", "p99 ms", "replicas", "labels"):
        table.add_column(column, justify="left" if column in ("model", "labels") else "right")
    up = sum(1 for r in snapshot.replicas if r["up"])
    for row in snapshot.models:
        rate = row.error_rate
        errors = Text(_cell(None if rate is None else rate * 100, ".2f") + " %")
        if rate:
            errors.stylize("red")
        labels = ", ".join(f"{k}→{v}" for k, v in sorted(row.labels.items())) or "-"
        table.add_row(
            row.name,
            f"{row.requests_per_second:.1f}",
            errors,
            _cell(row.p50_ms, ".2f"),
            _cell(row.p99_ms, ".2f"),
            f"{row.replicas_reporting}/{up}",
            labels,
        )
    parts: list[RenderableType] = [table]
    for replica in snapshot.replicas:
        if not replica["up"]:
            parts.append(Text(f"replica {replica['name']}: {replica['error']}", style="red"))
    if snapshot.door is not None:
        rotation = snapshot.door.get("in_rotation", {})
        text = ", ".join(f"{b}: {len(v)} in rotation" for b, v in sorted(rotation.items()))
        parts.append(Text(f"door {snapshot.door.get('container')}: {text or 'no stats'}"))
    for model, info in sorted((snapshot.rollouts or {}).items()):
        step = info.get("step") if isinstance(info, Mapping) else info
        traffic = info.get("traffic") if isinstance(info, Mapping) else None
        split = (
            f" ({traffic['percent']}% of unversioned requests -> version {traffic['version']})"
            if traffic
            else ""
        )
        parts.append(Text(f"rollout of {model}: step {step}{split}", style="yellow"))
    return Group(*parts)


# -------------------------------------------------------------------------- side effects


def collect(targets: Sequence[Target], *, clock: Callable[[], float] = time.monotonic) -> Scrapes:
    """Scrape every target once; unreadable ones are recorded, not raised."""
    pages: dict[str, Scrape] = {}
    errors: dict[str, str] = {}
    for target in targets:
        try:
            pages[target.name] = scrape(target.url, at=clock(), timeout=3.0)
        except StackError as exc:
            errors[target.name] = exc.message
    return Scrapes(pages, errors, {t.name: t.url for t in targets})


@dataclass
class TopSource:
    """Where ``top`` reads from: the stack's replicas, door and rollout journals."""

    lifecycle: Lifecycle
    spec: StackSpec
    spec_path: Path

    @classmethod
    def open(cls, spec_path: Path, *, source_root: Path) -> TopSource:
        spec = load_spec(spec_path, check_disk=False)
        if not spec.monitoring.enabled:
            raise StackError(
                "top reads the servers' metrics, but monitoring.enabled is false in the spec",
                hint="set monitoring.enabled: true and run `./tfstack up`",
            )
        return cls(Lifecycle(spec_path, source_root=source_root), spec, spec_path)

    def _loaded(self) -> Loaded:
        return Loaded(self.spec, self.spec_path, self.lifecycle.root, ())

    def targets(self) -> list[Target]:
        loaded = self._loaded()
        stack = self.lifecycle.stack(self.spec)
        replicas = self.lifecycle.replicas(loaded, stack)
        path = self.spec.monitoring.path
        return [Target(r.name, r.rest_url.rstrip("/") + path) for r in replicas]

    def door(self) -> Mapping[str, Any] | None:
        loaded = self._loaded()
        status = self.lifecycle.door_status(loaded, self.lifecycle.stack(self.spec))
        return status.to_json() if status is not None else None

    def rollouts(self) -> Mapping[str, Any] | None:
        try:
            return status_summary(self.lifecycle.root, self.spec.project)
        except (OSError, TfstackError):
            return None


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def snapshot_once(source: TopSource, *, interval: float) -> TopSnapshot:
    """Two rounds of scrapes ``interval`` seconds apart, as one snapshot."""
    targets = source.targets()
    if not targets:
        raise StackError(
            f"no running serving replica in project {source.spec.project}",
            hint="start the stack with `./tfstack up`",
        )
    earlier = collect(targets)
    time.sleep(max(MIN_INTERVAL_S, interval))
    return _snapshot(source, earlier, collect(targets))


def _snapshot(source: TopSource, earlier: Scrapes, later: Scrapes) -> TopSnapshot:
    """The snapshot of two rounds of scrapes, with the door and rollouts as they are now."""
    return build_snapshot(
        source.spec,
        earlier,
        later,
        at=now_iso(),
        door=source.door(),
        rollouts=source.rollouts(),
    )


def run_top(
    source: TopSource,
    *,
    interval: float,
    console: Console,
    iterations: int | None = None,
) -> None:
    """Refresh the view every ``interval`` seconds until Ctrl-C (or ``iterations`` refreshes)."""
    interval = max(MIN_INTERVAL_S, interval)
    targets = source.targets()
    earlier = collect(targets)
    done = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while iterations is None or done < iterations:
            time.sleep(interval)
            later = collect(targets)
            live.update(render_snapshot(_snapshot(source, earlier, later)), refresh=True)
            earlier = later
            done += 1
            if done % 10 == 0:  # replicas come and go (scaling, recreates)
                targets = source.targets()
