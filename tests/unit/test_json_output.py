"""--json documents and exit codes: what the code emits is what docs/json-output.md documents."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import tfstack.errors
from tfstack.bench.runner import BenchResult, parse_figure
from tfstack.core.files import plan_files, plan_to_json
from tfstack.rollout.journal import Journal, ModelState, Step, StepRecord
from tfstack.rollout.run import Outcome
from tfstack.selftest import pytest_args
from tfstack.spec import check_spec

from .specfixtures import Project, valid_spec

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "json-output.md"


def documented(schema: str) -> set[str]:
    """The field names of the table under `<!-- fields: schema -->` (a, b rows split)."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split(f"<!-- fields: {schema} -->", 1)[1].split("\n\n", 1)[0]
    fields: set[str] = set()
    for line in block.splitlines()[2:]:
        cell = line.split("|")[1]
        fields.update(re.findall(r"`([^`]+)`", cell))
    return fields


def emitted(document: dict[str, Any], prefix: str = "") -> set[str]:
    """Every field path of a document; arrays of objects as `name[].field` (first element)."""
    fields: set[str] = set()
    for key, value in document.items():
        fields.add(prefix + key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            fields |= emitted(value[0], f"{prefix}{key}[].")
    return fields


def validate_document(tmp_path: Path) -> dict[str, Any]:
    spec = valid_spec()
    spec["models"][0]["labels"]["stable"] = 7
    project = Project(tmp_path).with_models()
    return check_spec(project.write(spec)).to_json()


def rollout_document() -> dict[str, Any]:
    journal = Journal(
        project="demo",
        model="m",
        action="rollout",
        version=2,
        original=ModelState({"specific": [1]}, {"stable": 1}),
        original_spec_text="",
        original_served=(1,),
        previous_stable=1,
        steps=[StepRecord(Step("pin", "transition", "pin versions"), "done")],
        status="done",
    )
    return Outcome(journal, {"pin": 0.25}, "m version 2 is stable").to_json()


def bench_document() -> dict[str, Any]:
    result = BenchResult("x", "goal", [("latency", "1.5 ms (3 runs)"), ("n", "n/a")], True, ["y"])
    return result.to_json()


def test_validate_document_matches_the_docs(tmp_path: Path) -> None:
    """validate --json: the documented fields, problems as objects, schema tfstack.validate/v1."""
    document = validate_document(tmp_path)
    assert document["schema"] == "tfstack.validate/v1" and document["ok"] is False
    assert document["problems"][0]["yaml_path"].startswith("models[0].labels")
    assert emitted(document) == documented("tfstack.validate/v1")


def test_plan_document_matches_the_docs(tmp_path: Path) -> None:
    """plan --json: one entry per file with its action and diff."""
    document = plan_to_json(plan_files(tmp_path, {"a.txt": "new\n"}))
    assert document["changed"] is True and document["changes"][0]["action"] == "create"
    assert emitted(document) == documented("tfstack.plan/v1")


def test_rollout_document_matches_the_docs() -> None:
    """rollout/rollback --json: steps with their timings and the journal's outcome."""
    document = rollout_document()
    assert document["steps"][0]["seconds"] == 0.25 and document["total_seconds"] == 0.25
    assert emitted(document) == documented("tfstack.rollout/v1")


def test_bench_document_matches_the_docs() -> None:
    """bench --json: rows with the figure parsed out of the printed value, a verdict."""
    document = bench_document()
    assert document["rows"][0] == {
        "name": "latency",
        "value": "1.5 ms (3 runs)",
        "figure": 1.5,
        "unit": "ms",
    }
    assert document["verdict"] == "met"
    assert emitted(document) == documented("tfstack.bench/v1")


@pytest.mark.parametrize(
    ("value", "figure"),
    [
        ("12.3 ms", (12.3, "ms")),
        ("0", (0.0, None)),
        ("1.2x steady", (1.2, "x")),
        ("n/a", (None, None)),
    ],
)
def test_parse_figure(value: str, figure: tuple[float | None, str | None]) -> None:
    """A row's leading number and unit are found; text without a number gives None."""
    assert parse_figure(value) == figure


def exit_table(text: str) -> set[int]:
    """The codes of the `| code | meaning |` table in a markdown text."""
    block = text.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    return {int(line.split("|")[1]) for line in block.splitlines()[2:]}


def test_every_exit_code_is_in_both_tables() -> None:
    """Every TfstackError's exit_code, 0 and 130 appear in the README's and the doc's tables."""
    codes = {0, 130}
    for value in vars(tfstack.errors).values():
        if isinstance(value, type) and issubclass(value, tfstack.errors.TfstackError):
            codes.add(value.exit_code)
    assert codes == {0, 1, 2, 130}
    assert exit_table(DOC.read_text(encoding="utf-8")) == codes
    assert exit_table((ROOT / "README.md").read_text(encoding="utf-8")) == codes


def test_junit_xml_is_passed_to_pytest(tmp_path: Path) -> None:
    """test --junit-xml PATH becomes pytest's --junitxml=PATH; without it nothing is added."""
    report = tmp_path / "unit.xml"
    assert pytest_args(unit_only=True, junit_xml=report)[-1] == f"--junitxml={report}"
    assert not any(a.startswith("--junitxml") for a in pytest_args(unit_only=True))
