"""The modelserver runtime image: a build plan as data, performed through the docker SDK.

:func:`plan_runtime_image` is pure: tags, build args, labels and the files of the build context
come from its arguments. :func:`build_image` performs a plan with the engine's (legacy) builder,
showing a live status line, and raises :class:`~tfstack.errors.BuildError` with the log tail when a
step fails. :func:`ensure_runtime_image` chains engine -> base image -> wheelhouse -> build.

The build context is assembled in a temporary directory holding only the Dockerfile, its scripts
and the wheelhouse (hard links, not copies), so it stays small and its content, not its paths or
times, decides the layer cache: the same inputs give a build whose every step is cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from rich.console import Console

from tfstack.build.baseimage import LOCAL_BASE, BaseImagePlan, apply_base_image, plan_base_image
from tfstack.build.buildstream import BuildProgress, stream_build
from tfstack.build.wheelhouse import (
    WheelhousePlan,
    apply_wheelhouse,
    plan_wheelhouse,
    runtime_version,
    target_platform,
)
from tfstack.core.labels import LABEL_ISA, LABEL_MANAGED, LABEL_STAGE, LABEL_TENSORFLOW_VERSION
from tfstack.core.progress import Say
from tfstack.errors import BuildError

RUNTIME_REPOSITORY = "tfstack/serving-runtime"
DOCKER_DIR = Path("runtime/docker")
RUNTIME_DIR = Path("runtime")
WHEELHOUSE_DIR = Path(".cache/wheelhouse")
CONTEXT_SCRIPTS = (
    "Dockerfile",
    "tf_serving_entrypoint.sh",
    "prune.sh",
    "smoke.py",
    "overlay.py",
)
BUILD_TARGET = "runtime"
SUPERSEDED_GRACE_S = 3600.0
# The CPU features the TensorFlow wheel is compiled for (the format tfstack.build.isa parses).
# Measured, not assumed: on this AVX-512 host, TF 2.21's cpu_feature_guard logs "To enable the
# following instructions: AVX2 AVX512F AVX512_VNNI ... FMA" and never SSE3/SSE4.1/SSE4.2/AVX, so the
# x86_64 tensorflow-cpu wheel is built with -mavx (which implies SSE3, SSSE3, SSE4.1, SSE4.2); a CPU
# without AVX aborts at import. tests/integration/test_runtime_image.py re-checks this in the image.
ISA_BASELINES = {"x86_64": "x86_64:SSE3,SSSE3,SSE4.1,SSE4.2,AVX"}
TENSORFLOW_DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow")


@dataclass(frozen=True)
class ContextEntry:
    """One file or directory of the build context: where it comes from and its path inside."""

    source: Path
    target: str  # POSIX path relative to the context root


@dataclass(frozen=True)
class SourceInfo:
    """What the labels record about the source: revision (``-dirty`` if edited) and its time."""

    revision: str
    created: str  # RFC 3339


@dataclass(frozen=True)
class ImageBuildPlan:
    """Everything one image build needs, as plain data (printed by ``invoke images --dry-run``)."""

    tags: tuple[str, ...]  # the first is the one the build names; the others are added after
    target: str
    build_args: Mapping[str, str]
    labels: Mapping[str, str]
    context: tuple[ContextEntry, ...]
    no_cache: bool = False
    dockerfile: str = "Dockerfile"
    # "none" when the base carries python3 and venv (tfstack's own base): the build then cannot
    # reach any network, which proves everything came from the wheelhouse. A base without python3
    # (debian:*-slim) needs apt, hence the default network.
    network_mode: str | None = "none"

    @property
    def image(self) -> str:
        return self.tags[0]

    def describe(self) -> list[str]:
        lines = [f"image {', '.join(self.tags)} (stage '{self.target}' of {self.dockerfile})"]
        lines += [f"  build arg {key}={value}" for key, value in sorted(self.build_args.items())]
        lines += [f"  label {key}={value}" for key, value in sorted(self.labels.items())]
        lines.append("  context:")
        lines += [f"    {entry.target}  <- {entry.source}" for entry in self.context]
        if self.no_cache:
            lines.append("  layer cache: off (--no-cache)")
        network = "none" if self.network_mode == "none" else "default (base needs apt)"
        lines.append(f"  network during the build: {network}")
        return lines


def tensorflow_version(requirements: Iterable[str]) -> str:
    """The pinned TensorFlow version among the runtime's requirements."""
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        if name.strip().lower().replace("_", "-") in TENSORFLOW_DISTRIBUTIONS and version:
            return version.strip()
    raise BuildError(
        "the runtime's dependencies pin no TensorFlow version",
        hint='pin "tensorflow-cpu==X.Y.Z" in runtime/pyproject.toml',
    )


def isa_baseline(arch: str) -> str:
    """The ISA label value for a TensorFlow wheel of ``arch`` (``<arch>:unknown`` if unknown)."""
    return ISA_BASELINES.get(arch, f"{arch}:unknown")


def plan_runtime_image(
    *,
    root: Path,
    base_image: str,
    wheelhouse: WheelhousePlan,
    version: str,
    source: SourceInfo,
    no_cache: bool = False,
    repository: str = RUNTIME_REPOSITORY,
    base_has_python: bool = True,
) -> ImageBuildPlan:
    """The build of ``<repository>:<version>`` and ``:latest`` from the wheelhouse (pure)."""
    docker_dir = root / DOCKER_DIR
    context = [ContextEntry(docker_dir / name, name) for name in CONTEXT_SCRIPTS]
    context += [
        ContextEntry(wheelhouse.deps_dir, "wheelhouse/deps"),
        ContextEntry(wheelhouse.app_dir, "wheelhouse/app"),
    ]
    labels = {
        "org.opencontainers.image.title": "modelserver",
        "org.opencontainers.image.description": "TF-Serving-compatible tensorflow_model_server "
        "on the TensorFlow pip wheel",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": source.revision,
        "org.opencontainers.image.created": source.created,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": base_image,
        LABEL_TENSORFLOW_VERSION: tensorflow_version(wheelhouse.requirements),
        LABEL_ISA: isa_baseline(wheelhouse.target.arch),
        LABEL_MANAGED: "true",
    }
    return ImageBuildPlan(
        tags=(f"{repository}:{version}", f"{repository}:latest"),
        target=BUILD_TARGET,
        build_args={"BASE_IMAGE": base_image},
        labels=labels,
        context=tuple(context),
        no_cache=no_cache,
        network_mode="none" if base_has_python else None,
    )


def source_info(root: Path, *, paths: Iterable[str] = ("runtime",)) -> SourceInfo:
    """The git commit of ``root`` (``-dirty`` when ``paths`` have uncommitted changes), and its
    commit time: a time fixed by the source, so an unchanged tree gives identical labels and a
    fully cached rebuild."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
            )
        except OSError:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    if revision is None:
        return SourceInfo("unknown", datetime.fromtimestamp(0, UTC).isoformat())
    if git("status", "--porcelain", "--", *paths):
        revision += "-dirty"
    created = git("log", "-1", "--format=%cI") or datetime.fromtimestamp(0, UTC).isoformat()
    return SourceInfo(revision, created)


# --- performing a plan -------------------------------------------------------------------------


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


@contextmanager
def assembled_context(plan: ImageBuildPlan, *, parent: Path | None = None) -> Iterator[Path]:
    """A temporary directory holding exactly the plan's context entries (removed afterwards)."""
    for entry in plan.context:
        if not entry.source.exists():
            raise BuildError(
                f"build context file {entry.source} is missing",
                image=plan.image,
                hint="run `invoke images` from a complete checkout (it makes the wheelhouse)",
            )
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfstack-context-", dir=parent) as tmp:
        root = Path(tmp)
        for entry in plan.context:
            dest = root / entry.target
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry.source.is_dir():
                dest.mkdir()
                for item in sorted(entry.source.iterdir()):
                    if item.is_file():
                        _link_or_copy(item, dest / item.name)
            else:
                _link_or_copy(entry.source, dest)
        yield root


@dataclass(frozen=True)
class BuiltImage:
    """The outcome of a build: id, tags, size and how much of it came from the layer cache."""

    id: str
    tags: tuple[str, ...]
    size_bytes: int
    seconds: float
    steps: int
    rebuilt_steps: tuple[str, ...]

    @property
    def image(self) -> str:
        return self.tags[0]

    def summary(self) -> str:
        if self.rebuilt_steps:
            cache = f"{len(self.rebuilt_steps)} of {self.steps} steps rebuilt"
        else:
            cache = f"all {self.steps} steps cached"
        return (
            f"built {', '.join(self.tags)} ({self.id[7:19]}): {self.size_bytes / 1e9:.2f} GB "
            f"uncompressed, {self.seconds:.1f}s, {cache}"
        )


def build_image(
    client: docker.DockerClient, plan: ImageBuildPlan, *, console: Console, scratch: Path
) -> BuiltImage:
    """Perform a plan with the engine's builder; tags the result and reports its size."""
    progress = BuildProgress(plan.image)
    with assembled_context(plan, parent=scratch) as context:
        image_id = stream_build(
            client,
            progress,
            console=console,
            step_hint="fix the failing step (the Dockerfile is runtime/docker/Dockerfile); "
            "`invoke images --dry-run` shows the inputs",
            engine_hint=f"check that the base image {plan.build_args.get('BASE_IMAGE')} exists "
            "(`docker images`) and the engine has disk space",
            path=str(context),
            dockerfile=plan.dockerfile,
            target=plan.target,
            buildargs=dict(plan.build_args),
            labels=dict(plan.labels),
            nocache=plan.no_cache,
            network_mode=plan.network_mode,
        )
    repository_tags = [tag.rsplit(":", 1) for tag in plan.tags[1:]]
    for repository, tag in repository_tags:
        client.api.tag(image_id, repository, tag)
    size = int(client.api.inspect_image(image_id)["Size"])
    remove_superseded(client, keep=image_id)
    return BuiltImage(
        id=image_id,
        tags=plan.tags,
        size_bytes=size,
        seconds=progress.elapsed(),
        steps=progress.steps,
        rebuilt_steps=progress.rebuilt,
    )


def remove_superseded(
    client: docker.DockerClient, *, keep: str, grace_s: float = SUPERSEDED_GRACE_S
) -> list[str]:
    """Remove earlier runtime images that lost their tags to a newer build (they share all but
    their last layers with it). Images still used by a container, or younger than ``grace_s``
    (another test session may be about to start one by id), are left alone."""
    removed: list[str] = []
    filters = {"dangling": True, "label": [f"{LABEL_MANAGED}=true", f"{LABEL_STAGE}=runtime"]}
    now = time.time()
    for image in client.api.images(filters=filters):
        image_id = str(image["Id"])
        if image_id == keep or now - float(image.get("Created", now)) < grace_s:
            continue
        try:
            client.api.remove_image(image_id, noprune=False)
        except docker.errors.APIError:
            continue  # in use by a container, or already gone
        removed.append(image_id)
    return removed


@dataclass(frozen=True)
class RuntimeImagePlans:
    """The three plans behind ``invoke images``: base image, wheelhouse and image build."""

    base: BaseImagePlan
    wheelhouse: WheelhousePlan
    image: ImageBuildPlan

    def describe(self) -> list[str]:
        return [self.base.describe(), *self.wheelhouse.describe(), *self.image.describe()]


def engine_arch(client: docker.DockerClient) -> str:
    return str(client.info().get("Architecture", "unknown"))


def plan_runtime_build(
    client: docker.DockerClient, *, root: Path, no_cache: bool = False, try_pull: bool = True
) -> RuntimeImagePlans:
    """What ``invoke images`` would do: the base image, the wheelhouse, the image build."""
    base = plan_base_image(client, try_pull=try_pull)
    wheelhouse = plan_wheelhouse(
        root / WHEELHOUSE_DIR,
        root / RUNTIME_DIR,
        target_platform(base.suite, engine_arch(client)),
    )
    image = plan_runtime_image(
        root=root,
        base_image=base.image,
        wheelhouse=wheelhouse,
        version=runtime_version(root / RUNTIME_DIR / "pyproject.toml"),
        source=source_info(root),
        no_cache=no_cache,
        # tfstack's debootstrapped base carries python3 (BASE_PACKAGES); upstream's slim does not.
        base_has_python=base.image == LOCAL_BASE.format(suite=base.suite),
    )
    return RuntimeImagePlans(base, wheelhouse, image)


def apply_runtime_build(
    client: docker.DockerClient,
    plans: RuntimeImagePlans,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
) -> BuiltImage:
    """Base image -> wheelhouse -> image build; each part does only what its plan says."""
    say(plans.base.describe())
    apply_base_image(plans.base, say=say)
    for line in plans.wheelhouse.describe():
        say(line)
    apply_wheelhouse(plans.wheelhouse, say=say)
    say(f"building {', '.join(plans.image.tags)} on {plans.base.image}")
    console = console or Console(stderr=True)
    return build_image(client, plans.image, console=console, scratch=root / ".cache")


def ensure_runtime_image(
    client: docker.DockerClient,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
    no_cache: bool = False,
) -> BuiltImage:
    """The runtime image, current with the source tree (a cached rebuild when nothing changed)."""
    plans = plan_runtime_build(client, root=root, no_cache=no_cache)
    return apply_runtime_build(client, plans, root=root, say=say, console=console)


def ensure_present_image(
    client: Any,
    image: str,
    *,
    repository: str,
    build: Callable[[], object],
    building: str,
    hint: str,
    say: Say,
    pulling: bool = False,
) -> str:
    """The image id of ``image``: present, else built by ``build`` (an image of ``repository``),
    else pulled (announced when ``pulling``); BuildError with ``hint`` when the pull fails."""
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        pass
    if image.split(":", 1)[0] == repository:
        say(f"image {image} is missing: building it ({building})")
        build()
        return str(client.images.get(image).id)
    if pulling:
        say(f"image {image} is missing: pulling it")
    try:
        client.images.pull(image)
        return str(client.images.get(image).id)
    except docker.errors.DockerException as exc:
        raise BuildError(
            f"image {image} is not on the engine and cannot be pulled: {exc}",
            image=image,
            hint=hint,
        ) from exc


def ensure_image(client: Any, image: str, *, source_root: Path, say: Say) -> str:
    """The image id of ``image``: present, else pulled, else (the runtime image) built."""
    return ensure_present_image(
        client,
        image,
        repository=RUNTIME_REPOSITORY,
        build=lambda: ensure_runtime_image(client, root=source_root, say=say),
        building="first time: several minutes",
        hint="load it (`docker load`), or use the runtime image "
        f"{RUNTIME_REPOSITORY}:latest, which `invoke images` builds locally",
        say=say,
        pulling=True,
    )
