"""`invoke validate` and `invoke schema`: thin tasks; bad input exits 2 without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

from tfstack.spec import json_schema

from .specfixtures import Project, valid_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path).with_models()


def test_valid_spec_prints_one_line_summary(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid spec prints models, versions found and labels on one line and exits 0."""
    project.write(valid_spec())
    tasks.validate(MockContext(), spec=str(project.spec))
    out = capsys.readouterr().out
    assert out == f"{project.spec}: OK, 2 models, 3 versions found (3 served), 2 labels\n"


def test_invalid_spec_exits_2_listing_every_problem(project: Project) -> None:
    """Every problem is in the exit message; the code is 2 and no library exception escapes."""
    spec = valid_spec()
    spec["serving"]["rest_port"] = 8500
    spec["models"][1]["labels"] = {"canary": 9}
    project.write(spec)
    with pytest.raises(Exit) as caught:
        tasks.validate(MockContext(), spec=str(project.spec))
    assert caught.value.code == 2
    message = str(caught.value.message)
    assert message.startswith("tfstack: error: invalid stack spec: 2 problems\n")
    assert "serving.rest_port: grpc_port and rest_port are both 8500" in message
    assert "models[1].labels.canary: label 'canary' points at version 9" in message


def test_not_yaml_exits_2(project: Project) -> None:
    """Garbage input is a clean exit 2 with the file and line."""
    project.write("project: [\n")
    with pytest.raises(Exit) as caught:
        tasks.validate(MockContext(), spec=str(project.spec))
    assert caught.value.code == 2
    assert f"{project.spec}:2: not valid YAML" in str(caught.value.message)


def test_missing_spec_exits_2(tmp_path: Path) -> None:
    """A wrong --spec path is exit 2 with 'spec file not found'."""
    with pytest.raises(Exit) as caught:
        tasks.validate(MockContext(), spec=str(tmp_path / "missing.yaml"))
    assert caught.value.code == 2
    assert "spec file not found" in str(caught.value.message)


def test_skip_disk_accepts_missing_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-disk validates a spec whose models are generated later."""
    project = Project(tmp_path)
    project.write(valid_spec())
    with pytest.raises(Exit):
        tasks.validate(MockContext(), spec=str(project.spec))
    tasks.validate(MockContext(), spec=str(project.spec), skip_disk=True)
    assert "OK, 2 models (model directories not checked), 2 labels" in capsys.readouterr().out


def test_relative_spec_is_relative_to_the_project_root() -> None:
    """The default --spec works from any working directory (it is relative to the project)."""
    assert tasks.spec_file(tasks.DEFAULT_SPEC).resolve() == tasks.ROOT / "config" / "stack.yaml"
    assert tasks.spec_file("/abs/stack.yaml") == Path("/abs/stack.yaml")


def test_schema_task_writes_the_generated_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke schema` writes config/stack.schema.json, and reports when it was already current."""
    (tmp_path / "config").mkdir()
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    tasks.schema(MockContext())
    written = tmp_path / "config" / "stack.schema.json"
    assert json.loads(written.read_text()) == json_schema()
    assert capsys.readouterr().out == "config/stack.schema.json written\n"
    tasks.schema(MockContext())
    assert capsys.readouterr().out == "config/stack.schema.json already up to date\n"


def test_schema_task_reports_unwritable_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed schema write is a clean tfstack error, not an OSError traceback."""
    monkeypatch.setattr(tasks, "ROOT", tmp_path)  # no config/ folder: the write fails
    with pytest.raises(Exit) as caught:
        tasks.schema(MockContext())
    assert caught.value.code == 1
    assert "cannot write the schema" in str(caught.value.message)


def test_tasks_are_in_the_collection() -> None:
    """Both tasks are reachable as `invoke validate` and `invoke schema`."""
    assert {"validate", "schema"} <= set(tasks.ns.task_names)
