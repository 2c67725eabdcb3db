"""A Debian base image without a registry: pull it when possible, else debootstrap and import it.

The mirror comes from the host's own apt sources (never a hard-coded host), so the image is built
from whatever mirror this machine is configured to use. Plan, then apply: :func:`plan_base_image`
decides, :func:`apply_base_image` runs debootstrap and ``docker import``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from tfstack.core.labels import LABEL_MANAGED
from tfstack.core.progress import Say
from tfstack.errors import BuildError, CommandFailed

UPSTREAM_BASE = "debian:{suite}-slim"
LOCAL_BASE = "tfstack/debian:{suite}"
# Python comes with the base so image builds need no package downloads at all.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_apt_sources(texts: Iterable[str]) -> list[AptSource]:
    """Entries of one-line (``deb URI suite comp...``) and deb822 (``Types: deb``) source files."""
    sources: list[AptSource] = []
    for text in texts:
        for line in text.splitlines():
            match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if match:
                uri, suite, comps = match.groups()
                sources.append(AptSource(uri, (suite,), tuple(comps.split())))
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            for uri in fields.get("uris", "").split():
                sources.append(
                    AptSource(
                        uri,
                        tuple(fields.get("suites", "").split()),
                        tuple(fields.get("components", "").split()),
                    )
                )
    return sources


def choose_mirror(sources: Sequence[AptSource], suite: str) -> str:
    """The URI serving the plain release suite's main component (not -security, not -updates)."""
    for source in sources:
        if suite in source.suites and "main" in source.components:
            return source.uri.rstrip("/")
    raise BuildError(
        f"no apt source serves '{suite} main' on this host",
        hint="add a Debian mirror for that suite to /etc/apt/sources.list(.d), or make the "
        f"image {UPSTREAM_BASE.format(suite=suite)} available to the engine",
    )


def host_apt_source_texts(etc_apt: Path = Path("/etc/apt")) -> list[str]:
    files = [
        etc_apt / "sources.list",
        *sorted((etc_apt / "sources.list.d").glob("*.list")),
        *sorted((etc_apt / "sources.list.d").glob("*.sources")),
    ]
    return [f.read_text(errors="replace") for f in files if f.is_file()]


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "bookworm"


@dataclass(frozen=True)
class BaseImagePlan:
    """What to use as the base: an image already present, a pull, or a debootstrap build."""

    image: str
    action: str  # "present" | "pull" | "debootstrap"
    suite: str
    mirror: str | None = None

    def describe(self) -> str:
        if self.action == "present":
            return f"base image {self.image}: present"
        if self.action == "pull":
            return f"base image {self.image}: pull"
        return f"base image {self.image}: debootstrap {self.suite} (minbase + python3) and import"


def _image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def _pullable(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.pull(name)
    except docker.errors.DockerException:
        return False
    return True


def plan_base_image(
    client: docker.DockerClient, *, suite: str | None = None, try_pull: bool = True
) -> BaseImagePlan:
    suite = suite or host_suite()
    upstream = UPSTREAM_BASE.format(suite=suite)
    local = LOCAL_BASE.format(suite=suite)
    for name in (local, upstream):
        if _image_exists(client, name):
            return BaseImagePlan(name, "present", suite)
    if try_pull and _pullable(client, upstream):
        return BaseImagePlan(upstream, "present", suite)
    mirror = choose_mirror(parse_apt_sources(host_apt_source_texts()), suite)
    return BaseImagePlan(local, "debootstrap", suite, mirror)


def _run(argv: Sequence[str], **kwargs: object) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise CommandFailed(argv, result.returncode, tail)


def apply_base_image(plan: BaseImagePlan, *, say: Say) -> str:
    """Carry out the plan; returns the base image name to build FROM."""
    if plan.action == "present":
        return plan.image
    assert plan.mirror is not None
    if shutil.which("debootstrap") is None:
        say("installing debootstrap")
        _run(["apt-get", "install", "-y", "-q", "debootstrap"])
    with tempfile.TemporaryDirectory(prefix="tfstack-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {plan.suite} into {rootfs} (a few minutes)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                plan.suite,
                str(rootfs),
                plan.mirror,
            ]
        )
        # Slim the tree the way Debian's own -slim images do.
        for sub in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
        ):
            shutil.rmtree(rootfs / sub, ignore_errors=True)
            (rootfs / sub).mkdir(parents=True, exist_ok=True)
        say(f"importing {plan.image}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        result = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {LABEL_MANAGED}=true",
                "--change",
                'CMD ["bash"]',
                "-",
                plan.image,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.stdout.close()
        tar.wait()
        if result.returncode != 0 or tar.returncode != 0:
            raise BuildError(
                "docker import of the debootstrapped root failed",
                image=plan.image,
                log_tail=result.stderr.strip().splitlines()[-10:],
            )
    return plan.image


def ensure_base_image(client: docker.DockerClient, *, say: Say, suite: str | None = None) -> str:
    """The name of a usable Debian base image, building one with debootstrap when needed."""
    plan = plan_base_image(client, suite=suite)
    say(plan.describe())
    return apply_base_image(plan, say=say)
