"""tfstack.stack.top: snapshots from two rounds of captured metric pages, the view, the JSON."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tfstack.serving.metrics import parse_metrics
from tfstack.spec import StackSpec
from tfstack.stack.top import (
    SCHEMA,
    Scrapes,
    Target,
    TopSnapshot,
    build_snapshot,
    collect,
    render_snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "metrics"
DOC = ROOT / "docs" / "json-output.md"

SPEC = StackSpec.model_validate(
    {
        "project": "demo",
        "models": [
            {"name": "half_plus_two", "labels": {"stable": 1, "canary": 2}},
            {"name": "half_plus_three"},
        ],
    }
)


def rounds(*, down: str | None = None) -> tuple[Scrapes, Scrapes]:
    """Two replicas: r1 and r2 both from 'before' (t=0) to 'after' (t=20); ``down`` fails later."""
    before = (DATA / "replica-before.txt").read_text()
    after = (DATA / "replica-after.txt").read_text()
    urls = {"r1": "http://a/m", "r2": "http://b/m"}
    first = Scrapes({n: parse_metrics(before, target=n, at=0.0) for n in urls}, {}, urls)
    pages = {n: parse_metrics(after, target=n, at=20.0) for n in urls if n != down}
    errors = {down: "cannot read metrics from http://b/m: refused"} if down else {}
    return first, Scrapes(pages, errors, urls)


def snapshot(**kwargs: Any) -> TopSnapshot:
    earlier, later = rounds(**kwargs)
    return build_snapshot(SPEC, earlier, later, at="2026-01-01T00:00:00+00:00")


def test_rates_add_up_over_replicas() -> None:
    """Both replicas' windows are summed per model, rates over the window's seconds."""
    view = snapshot()
    two, three = view.models
    assert (two.name, two.requests, two.errors, two.replicas_reporting) == (
        "half_plus_two",
        400.0,
        6.0,
        2,
    )
    assert two.requests_per_second == 20.0
    assert two.error_rate == pytest.approx(0.015)
    assert two.p50_ms is not None and two.p99_ms is not None and two.p99_ms > two.p50_ms
    assert (three.requests, three.requests_per_second) == (50.0, 2.5)
    assert view.window_seconds == 20.0


def test_unreadable_replica_is_listed_and_left_out() -> None:
    """A replica whose second page failed counts in no rate and shows its error."""
    view = snapshot(down="r2")
    assert view.models[0].requests == 200.0
    assert [(r["name"], r["up"]) for r in view.replicas] == [("r1", True), ("r2", False)]
    assert view.replicas[1]["error"] == "cannot read metrics from http://b/m: refused"


def test_view_shows_rates_errors_and_labels() -> None:
    """The rich view has a row per model with req/s, error %, labels, and the replica's error."""
    console = Console(record=True, width=140)
    console.print(render_snapshot(snapshot(down="r2")))
    text = console.export_text()
    assert re.search(r"half_plus_two\s+│\s+10\.0\s+│\s+1\.50 %", text), text
    assert "canary→2, stable→1" in text
    assert "replica r2: cannot read metrics from http://b/m: refused" in text


def test_collect_records_unreachable_targets() -> None:
    """An unreachable page is an error for that replica, not an exception."""
    scrapes = collect([Target("gone", "http://127.0.0.1:9/metrics")])
    assert scrapes.pages == {}
    assert "cannot read metrics from http://127.0.0.1:9/metrics" in scrapes.errors["gone"]


def documented(schema: str) -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(f"<!-- fields: {schema} -->", 1)[1].split("\n\n", 1)[0]
    fields: set[str] = set()
    for line in block.splitlines()[2:]:
        fields.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return fields


def emitted(document: dict[str, Any], prefix: str = "") -> set[str]:
    fields: set[str] = set()
    for key, value in document.items():
        fields.add(prefix + key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            fields |= emitted(value[0], f"{prefix}{key}[].")
    return fields


def test_json_document_matches_the_docs() -> None:
    """top --once --json: schema tfstack.top/v1 with exactly the documented fields."""
    document = snapshot().to_json()
    assert document["schema"] == SCHEMA == "tfstack.top/v1"
    assert emitted(document) == documented(SCHEMA)


def test_view_shows_a_weighted_canarys_split() -> None:
    """A rollout with --traffic shows its step and the share of unversioned requests."""
    view = snapshot()
    rollouts = {"half_plus_two": {"step": "traffic_50", "traffic": {"version": 2, "percent": 50}}}
    view = TopSnapshot(
        view.project, view.at, view.window_seconds, view.models, view.replicas, None, rollouts
    )
    console = Console(record=True, width=140)
    console.print(render_snapshot(view))
    text = console.export_text()
    assert (
        "rollout of half_plus_two: step traffic_50 (50% of unversioned requests -> version 2)"
        in (text)
    )
