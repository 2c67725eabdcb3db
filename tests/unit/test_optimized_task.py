"""`invoke build-optimized`: options become a BuildRequest, errors become exit codes (no Docker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

from tfstack.build import optimized
from tfstack.docker import engine
from tfstack.errors import UsageError


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The library call the task makes, recorded instead of performed."""
    seen: dict[str, Any] = {}
    sentinel_client = object()
    monkeypatch.setattr(engine, "docker_client", lambda: sentinel_client)

    def fake_build(client: Any, request: optimized.BuildRequest, **kwargs: Any) -> Any:
        seen.update(client=client, request=request, **kwargs)
        kwargs["show"]("plan line")
        return None, None

    monkeypatch.setattr(optimized, "build_optimized", fake_build)
    seen["sentinel"] = sentinel_client
    return seen


def test_dry_run_maps_every_option_and_builds_nothing(
    captured: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tasks.build_optimized(
        MockContext(),
        version="2.20.0",
        target="x86-64-v3",
        source=str(tmp_path),
        toolchain="debian",
        jobs=3,
        dry_run=True,
    )
    request = captured["request"]
    assert captured["client"] is captured["sentinel"]
    assert captured["dry_run"] is True
    assert request == optimized.BuildRequest(
        version="2.20.0",
        target="x86-64-v3",
        source=tmp_path.resolve(),
        toolchain="debian",
        repository="tfstack/tfserving",
        jobs=3,
        no_cache=False,
    )
    out = capsys.readouterr().out
    assert out.splitlines() == ["plan line", "dry run: nothing built"]


def test_empty_options_mean_detect_and_default(captured: dict[str, Any]) -> None:
    """No --target/--version/--jobs: None, so the library detects the CPU and sizes Bazel."""
    tasks.build_optimized(MockContext(), dry_run=True)
    request = captured["request"]
    assert (request.version, request.target, request.source, request.jobs) == (
        None,
        None,
        None,
        None,
    )


def test_library_errors_exit_with_their_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "docker_client", object)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UsageError("--version master is a moving reference")

    monkeypatch.setattr(optimized, "build_optimized", refuse)
    with pytest.raises(Exit) as info:
        tasks.build_optimized(MockContext(), version="master", dry_run=True)
    assert info.value.code == 2
    assert "moving reference" in str(info.value.message)


def test_write_dockerfiles_refreshes_the_committed_copies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tasks, "ROOT", tmp_path)
    tasks.build_optimized(MockContext(), write_dockerfiles=True)
    devel, runtime = optimized.render_dockerfiles(optimized.committed_variant())
    assert (tmp_path / "dockerfiles/tfserving/Dockerfile.devel").read_text() == devel
    assert (tmp_path / "dockerfiles/tfserving/Dockerfile").read_text() == runtime
    assert "wrote dockerfiles/tfserving/Dockerfile.devel" in capsys.readouterr().out
