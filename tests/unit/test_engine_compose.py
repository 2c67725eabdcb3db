"""Compose detection and engine-first ordering, at their narrowest seams: fake `docker` CLIs on
PATH that answer like plugin-less CLIs do, no engine socket, a lifecycle whose engine fails."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tfstack.docker import engine
from tfstack.docker.engine import (
    EngineStep,
    MachineFacts,
    compose_usable,
    compose_version,
    parse_compose_version,
)
from tfstack.errors import EngineError, RenderError
from tfstack.render import COMPOSE_FILE, render_stack
from tfstack.render import renderer as render
from tfstack.spec import StackSpec
from tfstack.stack.lifecycle import Lifecycle

# What plugin-less Docker CLIs print for `docker compose ...` (exit codes as they give them).
PLUGINLESS_CLIS = {
    "cobra root rejects the flag": ("unknown flag: --project-directory", 125),
    "cobra root rejects a short flag": ("unknown shorthand flag: 'f' in -f", 125),
    "old CLI rejects the subcommand": ("docker: 'compose' is not a docker command.", 1),
    "unknown command": ('unknown command "compose" for "docker"', 1),
}


@pytest.fixture(autouse=True)
def fresh_probe_cache() -> Iterator[None]:
    """Each test probes its own fake CLIs (the cache is per process)."""
    compose_version.cache_clear()
    yield
    compose_version.cache_clear()


def fake_docker(bin_dir: Path, message: str, code: int) -> Path:
    """A `docker` that answers every command like a CLI without the Compose plugin."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(f"#!/bin/sh\necho {message!r} >&2\nexit {code}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@pytest.mark.parametrize("case", sorted(PLUGINLESS_CLIS))
def test_pluginless_answers_are_not_compose(case: str) -> None:
    """Every way a plugin-less CLI answers `docker compose version` reads as "no Compose"."""
    message, code = PLUGINLESS_CLIS[case]
    assert parse_compose_version(code, "", message) is None


def test_zero_exit_without_a_compose_version_is_not_compose() -> None:
    """A CLI that prints its own help with exit 0 is not mistaken for Compose."""
    help_text = "Usage:  docker [OPTIONS] COMMAND\n\nA self-sufficient runtime for containers\n"
    assert parse_compose_version(0, help_text, "") is None


def test_real_compose_version_lines_are_recognised() -> None:
    """The plugin's and the standalone binary's `version` answers give the version."""
    assert parse_compose_version(0, "Docker Compose version v2.40.3\n", "") == "v2.40.3"
    assert parse_compose_version(0, "Docker Compose version 2.20.2+ds1-1\n", "") == "2.20.2+ds1-1"


@pytest.mark.parametrize("case", sorted(PLUGINLESS_CLIS))
def test_pluginless_docker_on_path_is_observed_without_compose(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a plugin-less `docker` on PATH and no engine socket, the machine has neither."""
    message, code = PLUGINLESS_CLIS[case]
    fake_docker(tmp_path / "bin", message, code)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    facts = engine.observe_machine()
    assert facts.compose_plugin_works is False
    assert facts.engine_reachable is False


def test_probe_runs_once_per_process(tmp_path: Path) -> None:
    """`version` is asked once per command line; later checks reuse the answer."""
    calls = tmp_path / "calls"
    fake = tmp_path / "compose"
    fake.write_text(f'#!/bin/sh\necho x >> {calls}\necho "Docker Compose version v2.40.3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert compose_usable([str(fake)]) and compose_usable([str(fake)])
    assert calls.read_text().count("x") == 1


@pytest.mark.parametrize("case", sorted(PLUGINLESS_CLIS))
def test_compose_check_never_blames_the_file_for_a_pluginless_cli(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin-less CLI's complaint skips the optional check; required, it says Compose is
    missing, never that Compose rejects the rendered file."""
    message, code = PLUGINLESS_CLIS[case]
    docker = fake_docker(tmp_path / "bin", message, code)
    monkeypatch.setattr(render, "compose_candidates", lambda: [(str(docker), "compose")])
    spec = StackSpec.model_validate({"project": "demo", "models": [{"name": "m"}]})
    files = render_stack(spec, tmp_path / "config" / "stack.yaml", tmp_path)
    assert render.check_compose_file(files[COMPOSE_FILE], tmp_path) is False
    render.check_rendered(files, tmp_path)
    with pytest.raises(RenderError) as caught:
        render.check_rendered(files, tmp_path, compose=True)
    assert "no Compose v2 binary" in str(caught.value)
    assert "rejects" not in str(caught.value)


def test_ensure_engine_probes_again_after_installing_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose found missing, then installed by ensure_engine, is usable for the rest of the run."""
    compose = tmp_path / "compose"
    compose.write_text("#!/bin/sh\nexit 1\n")
    compose.chmod(compose.stat().st_mode | stat.S_IXUSR)
    assert not compose_usable([str(compose)])
    facts = MachineFacts(
        engine_reachable=True,
        dockerd_installed=True,
        compose_plugin_works=False,
        compose_binary=compose,
        is_root=True,
        is_debian=True,
        plugin_dir=tmp_path / "plugins",
    )

    def install(steps: list[EngineStep], **kwargs: Any) -> None:
        assert steps and steps[0].copy_file is not None
        compose.write_text('#!/bin/sh\necho "Docker Compose version v2.40.3"\n')

    monkeypatch.setattr(engine, "observe_machine", lambda: facts)
    monkeypatch.setattr(engine, "apply_engine_setup", install)
    monkeypatch.setattr(engine, "docker_client", lambda: "client")
    assert engine.ensure_engine() == "client"
    assert compose_usable([str(compose)])


def test_up_ensures_the_engine_before_writing_models_or_rendering(tmp_path: Path) -> None:
    """`up` asks for the engine (and Compose) first: when that fails, nothing was rendered."""
    spec = tmp_path / "config" / "stack.yaml"
    spec.parent.mkdir()
    spec.write_text("format: 1\nproject: demo\nmodels:\n  - name: m\n")
    order: list[str] = []

    def missing_engine() -> Any:
        order.append("engine")
        raise EngineError("`docker compose` (Compose v2) is not available")

    lifecycle = Lifecycle(spec, root=tmp_path, source_root=tmp_path, engine=missing_engine)
    with pytest.raises(EngineError, match="Compose v2"):
        lifecycle.up()
    assert order == ["engine"]
    assert not (tmp_path / "compose").exists(), "nothing rendered before the engine was ensured"
