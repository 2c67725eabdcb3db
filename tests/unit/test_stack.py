"""Compose command lines as data, the one command choke point, label-scoped cleanup, port checks."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tfstack.docker.compose import (
    CommandResult,
    ComposeProject,
    PortConflict,
    Stack,
    _run,
    config_hash_args,
    container_info,
    down_args,
    find_listener,
    logs_args,
    parse_config_hashes,
    parse_ps,
    port_conflicts,
    port_is_free,
    ps_args,
    raise_for_conflicts,
    remove_labelled,
    up_args,
)
from tfstack.errors import CommandFailed, StackError

PROJECT = ComposeProject("demo", Path("/p/compose/docker-compose.yml"), Path("/p/compose"))
BASE = [
    "docker",
    "compose",
    "--project-name",
    "demo",
    "--project-directory",
    "/p/compose",
    "--file",
    "/p/compose/docker-compose.yml",
]


def test_for_root_uses_the_rendered_compose_file(tmp_path: Path) -> None:
    """The project's file is <root>/compose/docker-compose.yml with compose/ as directory."""
    project = ComposeProject.for_root("demo", tmp_path)
    assert project.compose_file == tmp_path.resolve() / "compose" / "docker-compose.yml"
    assert project.project_dir == tmp_path.resolve() / "compose"


def test_up_args_never_pull_or_build() -> None:
    """up is detached, removes orphans, and never pulls or builds (images are ensured before)."""
    assert up_args(PROJECT) == [
        *BASE,
        "up",
        "--detach",
        "--remove-orphans",
        "--pull",
        "never",
        "--no-build",
    ]
    assert up_args(PROJECT, force_recreate=True)[-1] == "--force-recreate"


def test_down_args_with_and_without_file() -> None:
    """down keeps the rendered stop_grace_period; without a file it targets the project, bounded."""
    assert down_args(PROJECT) == [*BASE, "down", "--remove-orphans"]
    assert down_args(PROJECT, volumes=True)[-1] == "--volumes"
    assert down_args(PROJECT, with_file=False) == [
        "docker",
        "compose",
        "--project-name",
        "demo",
        "down",
        "--remove-orphans",
        "--timeout",
        "15",
    ]


def test_logs_ps_and_hash_args() -> None:
    """logs/ps/config --hash command lines are exact."""
    assert logs_args(PROJECT, follow=True, tail=50, services=["serving"]) == [
        *BASE,
        "logs",
        "--no-color",
        "--follow",
        "--tail",
        "50",
        "serving",
    ]
    assert ps_args(PROJECT) == [*BASE, "ps", "--all", "--format", "json"]
    assert config_hash_args(PROJECT) == [*BASE, "config", "--hash", "*"]


def test_parse_config_hashes_and_ps() -> None:
    """Compose's hash lines and both ps JSON layouts (array, one object per line) parse."""
    assert parse_config_hashes("serving abc123\nother def\n\n") == {
        "serving": "abc123",
        "other": "def",
    }
    assert parse_ps('[{"Name": "a"}, {"Name": "b"}]') == [{"Name": "a"}, {"Name": "b"}]
    assert parse_ps('{"Name": "a"}\n{"Name": "b"}\n') == [{"Name": "a"}, {"Name": "b"}]
    assert parse_ps("  ") == []


def test_run_returns_output_and_raises_with_stderr_tail() -> None:
    """The choke point returns stdout, and on failure raises CommandFailed with stderr's tail."""
    ok = _run([sys.executable, "-c", "print('hello')"])
    assert ok.returncode == 0 and ok.stdout.strip() == "hello"
    script = "import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(CommandFailed) as caught:
        _run([sys.executable, "-c", script])
    assert caught.value.returncode == 3
    assert caught.value.stderr_tail[-1] == "line 29"
    assert len(caught.value.stderr_tail) == 20
    unchecked = _run([sys.executable, "-c", "raise SystemExit(2)"], check=False)
    assert unchecked.returncode == 2


def test_run_hides_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray COMPOSE_FILE or COMPOSE_PROJECT_NAME in the caller's environment cannot retarget."""
    monkeypatch.setenv("COMPOSE_FILE", "/elsewhere.yml")
    monkeypatch.setenv("KEEP_ME", "1")
    result = _run(
        [
            sys.executable,
            "-c",
            "import os; print(os.environ.get('COMPOSE_FILE'), os.environ.get('KEEP_ME'))",
        ]
    )
    assert result.stdout.split() == ["None", "1"]


def test_run_missing_binary_is_a_clear_error() -> None:
    """A missing docker binary says so and points at `invoke engine`."""
    with pytest.raises(CommandFailed) as caught:
        _run(["/nonexistent/docker", "compose", "version"])
    assert caught.value.returncode == 127
    assert "invoke engine" in str(caught.value)


class FakeContainer:
    def __init__(self, name: str, labels: dict[str, str], **state: Any) -> None:
        self.name = name
        self.id = f"id-{name}"
        self.removed = False
        self.attrs = {
            "Id": self.id,
            "Name": f"/{name}",
            "Image": state.get("image", "sha256:img"),
            "Config": {"Labels": labels},
            "State": {
                "Status": state.get("status", "running"),
                "StartedAt": "2026-01-01T00:00:00Z",
                "ExitCode": state.get("exit_code", 0),
                **({"Health": {"Status": state["health"]}} if "health" in state else {}),
            },
            "NetworkSettings": {"Ports": state.get("ports", {})},
        }

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.removed = True


class FakeCollection:
    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.filters: list[Any] = []

    def list(self, filters: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        self.filters.append(filters)
        if not filters:
            return list(self.items)
        wanted = filters["label"]
        wanted = wanted if isinstance(wanted, list) else [wanted]

        def labels_of(item: Any) -> dict[str, str]:
            if hasattr(item, "attrs") and "Config" in item.attrs:
                labels: dict[str, str] = item.attrs["Config"]["Labels"]
                return labels
            return dict(item.labels)

        return [
            item
            for item in self.items
            if all(labels_of(item).get(w.split("=")[0]) == w.split("=")[1] for w in wanted)
        ]


class FakeNetwork:
    def __init__(self, name: str, labels: dict[str, str]) -> None:
        self.name = name
        self.labels = labels
        self.removed = False

    def remove(self) -> None:
        self.removed = True


class FakeClient:
    def __init__(self, containers: list[Any], networks: list[Any] | None = None) -> None:
        self.containers = FakeCollection(containers)
        self.networks = FakeCollection(networks or [])
        self.volumes = FakeCollection([])


TFSTACK = {"org.tfstack.project": "demo", "org.tfstack.managed": "true"}


def test_remove_labelled_touches_only_objects_with_both_tfstack_labels() -> None:
    """down's sweep removes only objects labelled as this tfstack project, never anything else."""
    ours = FakeContainer("demo-serving-1", {**TFSTACK, "com.docker.compose.project": "demo"})
    other_project = FakeContainer(
        "x", {"org.tfstack.project": "other", "org.tfstack.managed": "true"}
    )
    unmanaged = FakeContainer("y", {"org.tfstack.project": "demo"})
    stranger = FakeContainer("z", {})
    network = FakeNetwork("demo_default", dict(TFSTACK))
    foreign_network = FakeNetwork("bridge", {})
    client = FakeClient([ours, other_project, unmanaged, stranger], [network, foreign_network])
    removed = remove_labelled(client, "demo")
    assert removed == ["container demo-serving-1", "network demo_default"]
    assert ours.removed and network.removed
    assert not (other_project.removed or unmanaged.removed or stranger.removed)
    assert not foreign_network.removed


def test_stack_down_runs_compose_then_sweeps(tmp_path: Path) -> None:
    """Stack.down runs `compose down` (project-only when the file is gone), then the label sweep."""
    calls: list[list[str]] = []

    def runner(argv: list[str], **kwargs: Any) -> CommandResult:
        calls.append(list(argv))
        return CommandResult(tuple(argv), 0)

    project = ComposeProject.for_root("demo", tmp_path)
    stack = Stack(project, FakeClient([]), runner=runner)
    stack.down(volumes=True)
    assert calls == [down_args(project, volumes=True, with_file=False)]


def test_stack_up_needs_a_rendered_file(tmp_path: Path) -> None:
    """up without a rendered compose file says to render first."""
    stack = Stack(ComposeProject.for_root("demo", tmp_path), FakeClient([]), runner=_run)
    with pytest.raises(StackError, match="invoke render"):
        stack.up()


def test_container_info_reads_state_health_ports_and_hash() -> None:
    """Container facts used for planning and status come from inspect attributes."""
    container = FakeContainer(
        "demo-serving-1",
        {
            **TFSTACK,
            "com.docker.compose.service": "serving",
            "com.docker.compose.config-hash": "h1",
        },
        status="exited",
        exit_code=1,
        health="unhealthy",
        ports={"8501/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18501"}], "8500/tcp": None},
    )
    info = container_info(container)
    assert (info.service, info.state, info.exit_code, info.health) == (
        "serving",
        "exited",
        1,
        "unhealthy",
    )
    assert info.config_hash == "h1"
    assert info.ports == {"8501/tcp": [("127.0.0.1", "18501")], "8500/tcp": []}


def test_port_conflicts_names_the_owner_and_ignores_our_own_containers() -> None:
    """Taken ports are reported with their owner; ports held by this project are fine."""
    ours = FakeContainer(
        "demo-serving-1",
        {"com.docker.compose.project": "demo"},
        ports={"8501/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8501"}]},
    )
    theirs = FakeContainer(
        "web-1",
        {"com.docker.compose.project": "web"},
        ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8500"}]},
    )
    client = FakeClient([ours, theirs])
    conflicts = port_conflicts(
        client,
        "127.0.0.1",
        [8500, 8501, 9000, 9001],
        own_project="demo",
        is_free=lambda host, port: port == 9001,
        listener=lambda port: "process 42 (nginx)" if port == 9000 else None,
    )
    assert conflicts == [
        PortConflict("127.0.0.1", 8500, "container web-1 (compose project web)"),
        PortConflict("127.0.0.1", 9000, "process 42 (nginx)"),
    ]
    with pytest.raises(StackError) as caught:
        raise_for_conflicts(conflicts)
    assert "127.0.0.1:8500 is in use by container web-1" in str(caught.value)
    assert "serving.rest_port" in str(caught.value)


def test_port_is_free_and_find_listener_with_a_real_socket() -> None:
    """A listening socket makes its port not free, and /proc names this very process as owner."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        owner = find_listener(port)
        assert owner is not None and owner.startswith(f"process {__import__('os').getpid()} ")
    assert port_is_free("127.0.0.1", port)
