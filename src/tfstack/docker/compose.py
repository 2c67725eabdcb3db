"""The running stack through Docker Compose: command lines as data, one choke point that runs them.

Every ``docker compose`` invocation is built by a pure function (``up_args``, ``down_args``...,
unit-tested for exact argv) and executed by :func:`_run`, which logs the command, its exit code and
the tail of stderr, and raises :class:`CommandFailed` with that tail. Engine-side queries (which
containers belong to the project, which ports are taken) go through an injected docker client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from tfstack.core.labels import LABEL_MANAGED, LABEL_PROJECT
from tfstack.errors import CommandFailed, StackError

log = logging.getLogger(__name__)

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_HASH_LABEL = "com.docker.compose.config-hash"
STDERR_TAIL_LINES = 20
STOP_TIMEOUT_S = 15


@dataclass(frozen=True)
class ComposeProject:
    """One Compose project: its name, file and project directory (relative paths resolve there)."""

    name: str
    compose_file: Path
    project_dir: Path
    cli: tuple[str, ...] = ("docker", "compose")

    @classmethod
    def for_root(
        cls, name: str, root: Path, cli: Sequence[str] = ("docker", "compose")
    ) -> ComposeProject:
        """The project tfstack renders under ``root``: ``compose/docker-compose.yml``."""
        compose_dir = root.resolve() / "compose"
        return cls(name, compose_dir / "docker-compose.yml", compose_dir, tuple(cli))


# --------------------------------------------------------------------------------------------
# Pure command building


def base_args(project: ComposeProject, *, with_file: bool = True) -> list[str]:
    args = [*project.cli, "--project-name", project.name]
    if with_file:
        args += [
            "--project-directory",
            str(project.project_dir),
            "--file",
            str(project.compose_file),
        ]
    return args


def up_args(project: ComposeProject, *, force_recreate: bool = False) -> list[str]:
    """``up`` detached; images are made sure of beforehand, so never pull or build here."""
    args = [
        *base_args(project),
        "up",
        "--detach",
        "--remove-orphans",
        "--pull",
        "never",
        "--no-build",
    ]
    if force_recreate:
        args.append("--force-recreate")
    return args


def down_args(
    project: ComposeProject, *, volumes: bool = False, with_file: bool = True
) -> list[str]:
    args = [*base_args(project, with_file=with_file), "down", "--remove-orphans"]
    if not with_file:
        # With the file, each service's rendered stop_grace_period (the drain) applies; without
        # it Compose knows none, so the stop is bounded here.
        args += ["--timeout", str(STOP_TIMEOUT_S)]
    if volumes:
        args.append("--volumes")
    return args


def logs_args(
    project: ComposeProject,
    *,
    follow: bool = False,
    tail: int | None = None,
    timestamps: bool = False,
    services: Sequence[str] = (),
) -> list[str]:
    args = [*base_args(project), "logs", "--no-color"]
    if follow:
        args.append("--follow")
    if tail is not None:
        args += ["--tail", str(tail)]
    if timestamps:
        args.append("--timestamps")
    return [*args, *services]


def ps_args(project: ComposeProject) -> list[str]:
    return [*base_args(project), "ps", "--all", "--format", "json"]


def config_hash_args(project: ComposeProject) -> list[str]:
    """``config --hash *``: the hash Compose stores on a container and compares on ``up``."""
    return [*base_args(project), "config", "--hash", "*"]


def parse_config_hashes(stdout: str) -> dict[str, str]:
    """``serving 3f2a...`` lines → {service: hash}."""
    hashes: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            hashes[parts[0]] = parts[1]
    return hashes


def parse_ps(stdout: str) -> list[dict[str, Any]]:
    """``ps --format json``: a JSON array (older Compose) or one object per line (newer)."""
    text = stdout.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
        return [row for row in rows if isinstance(row, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# The one choke point


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[..., CommandResult]


def _environment() -> dict[str, str]:
    """The caller's environment without COMPOSE_* (a stray COMPOSE_FILE must not change targets)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()][-lines:]


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    hint: str | None = None,
) -> CommandResult:
    """Run one external command; log argv, exit code and stderr tail; raise CommandFailed.

    ``capture=False`` streams to the terminal (``logs --follow``).
    """
    log.info("run: %s", " ".join(argv))
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
            env=_environment(),
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise CommandFailed(
            argv, 127, [f"{argv[0]}: not found"], hint_text="run `invoke engine` to set up Docker"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        stderr = (
            exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        )
        raise CommandFailed(
            argv, -1, [*_tail(stderr or ""), f"(no result after {timeout:.0f}s)"], hint_text=hint
        ) from exc
    stdout = completed.stdout or ""
    stderr = completed.stderr or ""
    log.info("exit %d: %s", completed.returncode, " ".join(argv[:4]))
    if completed.returncode != 0:
        for line in _tail(stderr):
            log.info("  stderr: %s", line)
    result = CommandResult(tuple(argv), completed.returncode, stdout, stderr)
    if check and completed.returncode != 0:
        raise CommandFailed(argv, completed.returncode, _tail(stderr or stdout), hint_text=hint)
    return result


# --------------------------------------------------------------------------------------------
# The stack


NEVER_FINISHED_PREFIX = "0001-01-01"  # the engine's FinishedAt for a container never stopped
SIGNAL_NAMES = {137: "SIGKILL", 143: "SIGTERM", 139: "SIGSEGV", 134: "SIGABRT", 132: "SIGILL"}


@dataclass(frozen=True)
class LastExit:
    """How the container's previous run ended (kept by the engine across policy restarts)."""

    code: int
    oom_killed: bool
    finished_at: str
    error: str = ""  # the engine's own error, e.g. a failed mount on start

    @property
    def reason(self) -> str:
        """``OOM killed``, ``killed by SIGKILL`` or ``exit 1``: the why, in a few words."""
        if self.oom_killed:
            return "OOM killed"
        if self.error:
            return f"engine error: {self.error}"
        if self.code in SIGNAL_NAMES:
            return f"killed by {SIGNAL_NAMES[self.code]}"
        return f"exit {self.code}"

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "oom_killed": self.oom_killed,
            "finished_at": self.finished_at,
            "reason": self.reason,
        }


def last_exit_of(attrs: Mapping[str, Any]) -> LastExit | None:
    """The previous run's end from ``docker inspect`` attrs; None for a container never stopped."""
    state = attrs.get("State") or {}
    finished = str(state.get("FinishedAt") or "")
    if not finished or finished.startswith(NEVER_FINISHED_PREFIX):
        return None
    return LastExit(
        code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        finished_at=finished,
        error=str(state.get("Error") or ""),
    )


@dataclass(frozen=True)
class ContainerInfo:
    """A container of the project as the engine reports it."""

    id: str
    name: str
    service: str
    state: str  # running, exited, created, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    exit_code: int | None
    started_at: str
    image_id: str
    config_hash: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # "8501/tcp" -> [(ip, port)]
    restart_count: int = 0  # restarts by the restart policy since the container was created
    last_exit: LastExit | None = None


def container_info(container: Any) -> ContainerInfo:
    """ContainerInfo from a docker SDK container (attrs as ``docker inspect`` gives them)."""
    attrs = container.attrs
    state = attrs.get("State", {})
    labels = attrs.get("Config", {}).get("Labels") or {}
    health = (state.get("Health") or {}).get("Status")
    ports: dict[str, list[tuple[str, str]]] = {}
    for key, bindings in (attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
        ports[key] = [(b.get("HostIp", ""), b.get("HostPort", "")) for b in bindings or []]
    return ContainerInfo(
        id=attrs.get("Id", container.id),
        name=attrs.get("Name", "").lstrip("/"),
        service=labels.get(COMPOSE_SERVICE_LABEL, ""),
        state=state.get("Status", "unknown"),
        health=health,
        exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
        started_at=state.get("StartedAt", ""),
        image_id=attrs.get("Image", ""),
        config_hash=labels.get(COMPOSE_HASH_LABEL, ""),
        labels=labels,
        ports=ports,
        restart_count=int(attrs.get("RestartCount") or 0),
        last_exit=last_exit_of(attrs),
    )


WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Replica:
    """One serving container reached through the host ports the engine published for it."""

    name: str
    rest_url: str
    grpc_target: str  # host:port


def published_address(container: ContainerInfo, port: int, host: str) -> str | None:
    """``ip:port`` on this host where the engine publishes the container's ``port``/tcp.

    A wildcard binding (0.0.0.0, ::) is reached on ``host``; None when the port is not published
    (the container is not running, or the engine has not assigned it yet).
    """
    for ip, published in container.ports.get(f"{port}/tcp", []):
        if published:
            return f"{host if ip in WILDCARD_HOSTS else ip}:{published}"
    return None


def replica_of(
    container: ContainerInfo, *, host: str, rest_port: int, grpc_port: int
) -> Replica | None:
    """The container's own REST and gRPC addresses, or None when it does not publish both."""
    if container.state != "running":
        return None
    rest = published_address(container, rest_port, host)
    grpc = published_address(container, grpc_port, host)
    if rest is None or grpc is None:
        return None
    return Replica(container.name, f"http://{rest}", grpc)


def replicas(
    containers: Iterable[ContainerInfo], *, host: str, rest_port: int, grpc_port: int
) -> list[Replica]:
    """Every running container's own endpoints (with ``serving.replicas: N``, Compose gives each
    replica one port of the published range: which one is only known from the engine)."""
    found = (replica_of(c, host=host, rest_port=rest_port, grpc_port=grpc_port) for c in containers)
    return [replica for replica in found if replica is not None]


class Stack:
    """A Compose project on an engine: up, down, logs, and what runs."""

    def __init__(self, project: ComposeProject, client: Any, runner: Runner = _run) -> None:
        self.project = project
        self.client = client
        self.runner = runner

    # -- observation (docker SDK) --------------------------------------------------------

    def containers(self, *, all_states: bool = True) -> list[ContainerInfo]:
        """Containers of this Compose project, by the project label Compose sets."""
        found = self.client.containers.list(
            all=all_states, filters={"label": f"{COMPOSE_PROJECT_LABEL}={self.project.name}"}
        )
        return sorted((container_info(c) for c in found), key=lambda c: c.name)

    def with_last_deaths(self, containers: list[ContainerInfo]) -> list[ContainerInfo]:
        """Containers the restart policy restarted, with their last exit from the engine's
        ``die`` events: once running again, ``docker inspect`` resets ExitCode to 0."""
        restarted = {c.id: c for c in containers if c.restart_count and c.state == "running"}
        if not restarted:
            return containers
        deaths = last_deaths(self.client, list(restarted))
        return [dataclasses.replace(c, last_exit=deaths.get(c.id, c.last_exit)) for c in containers]

    def service_containers(self, service: str) -> list[ContainerInfo]:
        return [c for c in self.containers() if c.service == service]

    def log_tail(self, service: str = "serving", lines: int = 30) -> list[str]:
        """The last log lines of a service's containers ([] when there are none)."""
        out: list[str] = []
        for info in self.service_containers(service):
            try:
                raw = self.client.containers.get(info.id).logs(tail=lines)
            except docker.errors.APIError as exc:  # the container may be gone already
                out.append(f"(logs of {info.name} unavailable: {exc})")
                continue
            out.extend(raw.decode(errors="replace").splitlines()[-lines:])
        return out

    def config_hashes(self) -> dict[str, str]:
        """Per service, the hash Compose would give a container created from the current file."""
        return parse_config_hashes(self.runner(config_hash_args(self.project)).stdout)

    # -- actions (compose CLI) --------------------------------------------------------------

    def up(self, *, force_recreate: bool = False) -> None:
        if not self.project.compose_file.is_file():
            raise StackError(
                f"{self.project.compose_file} does not exist", hint="run `invoke render` first"
            )
        self.runner(
            up_args(self.project, force_recreate=force_recreate),
            hint="`invoke logs` shows the server log; `invoke status` what runs",
        )

    def down(self, *, volumes: bool = False) -> list[str]:
        """Remove the project (Compose), then anything else carrying its labels; names removed."""
        with_file = self.project.compose_file.is_file()
        # tfstack's own containers on the project's network (a canary replica left by an
        # interrupted rollout) go first, or Compose could not remove the network.
        removed = remove_strays(self.client, self.project.name)
        self.runner(down_args(self.project, volumes=volumes, with_file=with_file))
        return removed + remove_labelled(self.client, self.project.name, volumes=volumes)

    def logs(self, *, follow: bool = False, tail: int | None = None) -> CommandResult:
        return self.runner(logs_args(self.project, follow=follow, tail=tail), capture=not follow)


def last_deaths(client: Any, container_ids: Sequence[str]) -> dict[str, LastExit]:
    """Per container id, its last ``die`` event (exit code, and an ``oom`` event before it) from
    the engine's recent event buffer; ids with no event there are left out."""
    found: dict[str, LastExit] = {}
    oom: set[str] = set()
    try:
        events = client.events(
            since=0,
            until=int(time.time()),
            filters={"container": list(container_ids), "event": ["die", "oom"]},
            decode=True,
        )
        for event in events:
            ident = str(event.get("id") or event.get("Actor", {}).get("ID", ""))
            if event.get("status") == "oom" or event.get("Action") == "oom":
                oom.add(ident)
                continue
            attributes = event.get("Actor", {}).get("Attributes", {})
            stamp = dt.datetime.fromtimestamp(event.get("timeNano", 0) / 1e9, dt.UTC)
            found[ident] = LastExit(
                code=int(attributes.get("exitCode", 0)),
                oom_killed=ident in oom,
                finished_at=stamp.isoformat().replace("+00:00", "Z"),
            )
            oom.discard(ident)
    except (docker.errors.DockerException, OSError) as exc:  # a nicety: status still answers
        log.info("engine events unavailable: %s", exc)
    return found


def remove_strays(client: Any, project: str) -> list[str]:
    """Remove the project's tfstack-made containers that Compose does not know (no Compose
    project label); returns ``container name`` for each."""
    selector = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]}
    removed: list[str] = []
    for container in client.containers.list(all=True, filters=selector):
        if COMPOSE_PROJECT_LABEL in (container.labels or {}):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(f"container {container.name}")
    return removed


def remove_labelled(client: Any, project: str, *, volumes: bool = False) -> list[str]:
    """Remove containers, networks (and volumes) labelled ``org.tfstack.project=<project>``.

    Only objects carrying BOTH tfstack labels are touched, so nothing tfstack did not create is
    ever removed. Returns what was removed, as ``kind name``.
    """
    selector = {"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]}
    removed: list[str] = []
    for container in client.containers.list(all=True, filters=selector):
        with contextlib.suppress(Exception):
            container.remove(force=True, v=volumes)
            removed.append(f"container {container.name}")
    for network in client.networks.list(filters=selector):
        with contextlib.suppress(Exception):
            network.remove()
            removed.append(f"network {network.name}")
    if volumes:
        for volume in client.volumes.list(filters=selector):
            with contextlib.suppress(Exception):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
    return removed


# --------------------------------------------------------------------------------------------
# Ports


@dataclass(frozen=True)
class PortConflict:
    host: str
    port: int
    owner: str  # "container X (project Y)", "process 123 (nginx)", or "an unknown process"


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (SO_REUSEADDR: TIME_WAIT does not count as taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def find_listener(port: int, proc: Path = Path("/proc")) -> str | None:
    """``process <pid> (<command>)`` listening on ``port``, when /proc lets us see it."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in targets:
                    command = (
                        (pid_dir / "cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                        .strip()
                    )
                    return f"process {pid_dir.name} ({command[:80] or '?'})"
            except OSError:
                continue
    return None


def container_publishing(client: Any, port: int) -> tuple[str, str | None] | None:
    """(container name, compose project) of a running container publishing host ``port``."""
    for container in client.containers.list():
        info = container_info(container)
        for bindings in info.ports.values():
            if any(host_port == str(port) for _, host_port in bindings):
                return info.name, info.labels.get(COMPOSE_PROJECT_LABEL)
    return None


def port_conflicts(
    client: Any,
    host: str,
    ports: Iterable[int],
    *,
    own_project: str,
    is_free: Callable[[str, int], bool] = port_is_free,
    listener: Callable[[int], str | None] = find_listener,
) -> list[PortConflict]:
    """Ports the stack needs that something else holds (our own project's containers are fine)."""
    conflicts: list[PortConflict] = []
    for port in ports:
        if is_free(host, port):
            continue
        holder = container_publishing(client, port)
        if holder is not None:
            name, project = holder
            if project == own_project:
                continue
            owner = f"container {name}" + (f" (compose project {project})" if project else "")
        else:
            owner = listener(port) or "a process tfstack cannot see (another user's?)"
        conflicts.append(PortConflict(host, port, owner))
    return conflicts


def raise_for_conflicts(conflicts: Sequence[PortConflict]) -> None:
    if not conflicts:
        return
    lines = [f"{c.host}:{c.port} is in use by {c.owner}" for c in conflicts]
    raise StackError(
        "ports needed by the stack are taken:\n" + "\n".join(f"    {line}" for line in lines),
        service="serving",
        hint="stop whatever holds them, or set serving.rest_port / serving.grpc_port in the spec",
    )
