"""``invoke build-optimized``: tensorflow_model_server compiled for the CPUs it will run on.

Upstream's two-stage flow (contract section 1), with its traps removed:

* ``Dockerfile.devel`` compiles the server with one ``bazel build`` line; ``Dockerfile`` copies
  ``/usr/local/bin/tensorflow_model_server`` out of it onto a slim, non-root runtime base. Both are
  rendered from ``templates/optimized/`` (one template each; the offline Debian toolchain and a
  local ``--source`` tree are parameters, so the Bazel command line and target label never differ).
* The target ISA becomes ``TF_SERVING_BUILD_OPTIONS`` (:mod:`tfstack.build.isa`), recorded in
  labels and in the tag ``<repo>:<version>-<isa>``; the version is a pinned tag or commit, never
  master's tip.
* Bazel's ``--jobs`` and ``--local_ram_resources`` come from the engine's memory and CPUs.
* A persistent Bazel cache although the legacy builder cannot mount volumes into ``RUN``: a small
  HTTP cache server (:mod:`tfstack.build.bazel_cache`) keeps action results on a named volume, and
  the build runs in that server's network namespace (``network_mode=container:<server>``), so
  ``--remote_cache=http://127.0.0.1:<port>`` is the same on every build and the Docker layer cache
  of the build step stays valid. Changing the ISA flags invalidates the C++ compiles of the target
  configuration (they must be redone), but every exec-configuration action (protoc and the other
  build tools, code generators) and every action of an unchanged configuration is a cache hit.

Plan, then apply: :func:`plan_optimized_build` is pure (facts in, plan out; unit-tested);
:func:`apply_optimized_build` performs a plan through the docker SDK.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import jinja2
from rich.console import Console

from tfstack.build import bazel_cache
from tfstack.build.baseimage import apply_base_image, plan_base_image
from tfstack.build.buildstream import ANSI_ESCAPE, BuildProgress, stream_build
from tfstack.build.isa import (
    CpuInfo,
    IsaTarget,
    engine_cpu,
    isa_labels,
    parse_cpuinfo,
    resolve_target,
)
from tfstack.core.labels import (
    LABEL_BUILD_DATE,
    LABEL_BUILD_OPTIONS,
    LABEL_BUILD_TOOLCHAIN,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_TFSERVING_SOURCE,
    LABEL_TFSERVING_VERSION,
)
from tfstack.core.progress import Say
from tfstack.errors import BuildError, RenderError, UsageError
from tfstack.render import environment

DEFAULT_REPOSITORY = "tfstack/tfserving"
DEFAULT_VERSION = "2.20.0"
TARGET_LABEL = "tensorflow_serving/model_servers:tensorflow_model_server"
UPSTREAM_BASE = "ubuntu:22.04"
UPSTREAM_BAZEL = "7.4.1"
DEBIAN_BAZEL = "4.2.3"  # bookworm's bazel-bootstrap
RUNTIME_UID = 10001
COMMITTED_DIR = Path("dockerfiles/tfserving")
DEVEL_DOCKERFILE = "Dockerfile.devel"
RUNTIME_DOCKERFILE = "Dockerfile"
TOOLCHAINS = ("upstream", "debian")

CACHE_VOLUME = "tfstack-bazel-cache"
CACHE_PORT = 9092
CACHE_MOUNT = "/cache"

# Memory model of a TensorFlow C++ build. The heaviest TensorFlow kernels peak at about 2.5 GB
# per cc1plus; users report `internal compiler error: Killed (program cc1plus)` with 8 jobs on
# 16 GB. The Bazel server (JVM) and the OS get a fixed reserve.
PER_JOB_MB = 2560
RESERVE_MB = 2048

_VERSION_TAG = re.compile(r"^\d+\.\d+\.\d+(?:-rc\d+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MOVING_REFS = {"head", "master", "main", "nightly", "latest"}


# --------------------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class DockerfileVariant:
    """The parameters the two templates take; one template each, so one build line."""

    toolchain: str  # "upstream" (Ubuntu 22.04 + Bazel installer) | "debian" (bazel-bootstrap)
    source: str  # "download" (tarball of the commit) | "context" (a local tree, --source)
    base_image: str  # devel stage base
    runtime_base: str  # runtime stage base
    bazel_version: str
    bazel_arch: str = "x86_64"  # "x86_64" | "arm64": Bazel's release file names

    @property
    def name(self) -> str:
        return f"{self.toolchain} toolchain, source {self.source}"


def committed_variant() -> DockerfileVariant:
    """The variant kept in the repository: upstream's toolchain, source downloaded."""
    return DockerfileVariant("upstream", "download", UPSTREAM_BASE, UPSTREAM_BASE, UPSTREAM_BAZEL)


def _environment() -> jinja2.Environment:
    return environment()


def render_dockerfiles(
    variant: DockerfileVariant,
    *,
    repository: str = DEFAULT_REPOSITORY,
    default_version: str = DEFAULT_VERSION,
    default_isa: str = "portable",
) -> tuple[str, str]:
    """(Dockerfile.devel, Dockerfile) texts for a variant; deterministic."""
    values = {
        "variant": variant.name,
        "toolchain": variant.toolchain,
        "source": variant.source,
        "base_image": variant.base_image,
        "runtime_base": variant.runtime_base,
        "bazel_version": variant.bazel_version,
        "bazel_arch": variant.bazel_arch,
        "default_commit": default_version,
        "default_version": default_version,
        "default_isa": default_isa,
        "repository": repository,
        "target_label": TARGET_LABEL,
        "uid": RUNTIME_UID,
    }
    texts = []
    for name in ("Dockerfile.devel.j2", "Dockerfile.j2"):
        try:
            texts.append(_environment().get_template(f"optimized/{name}").render(**values))
        except jinja2.TemplateError as exc:
            raise RenderError(
                str(exc), template=f"optimized/{name}", line=getattr(exc, "lineno", None)
            ) from exc
    return texts[0], texts[1]


def write_committed_dockerfiles(root: Path) -> list[Path]:
    """Refresh the rendered copies kept in the repository (dockerfiles/tfserving/)."""
    devel, runtime = render_dockerfiles(committed_variant())
    directory = root / COMMITTED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((DEVEL_DOCKERFILE, devel), (RUNTIME_DOCKERFILE, runtime)):
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


# --------------------------------------------------------------------------- Bazel resources


@dataclass(frozen=True)
class BazelResources:
    """How many compile jobs fit the engine, and why."""

    engine_memory_mb: int
    engine_cpus: int
    jobs: int
    ram_mb: int  # --local_ram_resources
    per_job_mb: int
    reserve_mb: int
    jobs_from_user: bool = False

    @property
    def estimated_peak_mb(self) -> int:
        return self.reserve_mb + self.jobs * self.per_job_mb

    @property
    def options(self) -> tuple[str, ...]:
        return (
            f"--jobs={self.jobs}",
            f"--local_ram_resources={self.ram_mb}",
            f"--local_cpu_resources={self.engine_cpus}",
        )

    @property
    def fits(self) -> bool:
        return self.estimated_peak_mb <= self.engine_memory_mb

    def explain(self) -> list[str]:
        fit_jobs = max(1, (self.engine_memory_mb - self.reserve_mb) // self.per_job_mb)
        why = "--jobs given" if self.jobs_from_user else (
            f"min({self.engine_cpus} CPUs, {fit_jobs} jobs that fit in memory)"
        )  # fmt: skip
        lines = [
            f"engine: {self.engine_cpus} CPUs, {self.engine_memory_mb / 1024:.1f} GiB memory",
            f"--jobs={self.jobs}: {why}; a TensorFlow C++ compile peaks at ~"
            f"{self.per_job_mb / 1024:.1f} GiB",
            f"--local_ram_resources={self.ram_mb}: engine memory minus "
            f"{self.reserve_mb / 1024:.1f} GiB for the Bazel server and the OS",
            f"estimated peak memory: {self.estimated_peak_mb / 1024:.1f} GiB "
            f"({self.reserve_mb / 1024:.1f} reserve + {self.jobs} x "
            f"{self.per_job_mb / 1024:.1f} per job)",
        ]
        return lines


def size_bazel(
    memory_bytes: int,
    cpus: int,
    *,
    jobs: int | None = None,
    per_job_mb: int = PER_JOB_MB,
    reserve_mb: int = RESERVE_MB,
) -> BazelResources:
    """Bazel resources for an engine with ``memory_bytes`` and ``cpus`` (pure)."""
    memory_mb = memory_bytes // (1024 * 1024)
    cpus = max(1, cpus)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    fit = max(1, (memory_mb - reserve_mb) // per_job_mb)
    chosen = jobs if jobs is not None else min(cpus, fit)
    ram_mb = max(per_job_mb, memory_mb - reserve_mb)
    return BazelResources(
        memory_mb, cpus, chosen, ram_mb, per_job_mb, reserve_mb, jobs_from_user=jobs is not None
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for (the task's options)."""

    version: str | None = None
    target: str | None = None
    source: Path | None = None
    toolchain: str = "upstream"
    repository: str = DEFAULT_REPOSITORY
    jobs: int | None = None
    no_cache: bool = False  # Docker layer cache off (the Bazel cache still serves)
    cache_volume: str = CACHE_VOLUME
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    extra_bazel_options: tuple[str, ...] = ()  # appended to TF_SERVING_BAZEL_OPTIONS


@dataclass(frozen=True)
class BuildFacts:
    """What the plan depends on besides the request; gathered from the engine, faked in tests."""

    host_cpu: CpuInfo
    host_cpu_source: str  # how it was read, for the plan output
    memory_bytes: int
    cpus: int
    arch: str  # engine architecture, x86_64 | aarch64
    base_image: str  # Debian base with python3: cache server, debian toolchain
    base_image_action: str  # "present" | "pull" | "debootstrap"
    now: dt.datetime


@dataclass(frozen=True)
class CachePlan:
    volume: str
    port: int
    image: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> tuple[str, ...]:
        return (f"--remote_cache={self.url}",)


@dataclass(frozen=True)
class ImageStep:
    """One docker build: a Dockerfile text, its context, arguments, tag and labels."""

    tag: str
    dockerfile_name: str
    dockerfile: str
    build_args: Mapping[str, str]
    labels: Mapping[str, str]
    source: Path | None = None  # copied into the context as source/
    network_via_cache: bool = False  # run the build in the cache server's network namespace


@dataclass(frozen=True)
class OptimizedBuildPlan:
    request: BuildRequest
    version: str
    target: IsaTarget
    resources: BazelResources
    cache: CachePlan
    variant: DockerfileVariant
    devel: ImageStep
    runtime: ImageStep
    build_options: str
    bazel_options: str
    source_description: str
    facts: BuildFacts
    warnings: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """The full plan, for --dry-run and the start of a real build."""
        lines = [
            f"tensorflow/serving {self.version} from {self.source_description}",
            f"toolchain: {self.variant.name} (Bazel {self.variant.bazel_version}, "
            f"devel base {self.variant.base_image}, runtime base {self.variant.runtime_base})",
            f"build host CPU: {self.facts.host_cpu.describe()} ({self.facts.host_cpu_source})",
            f"target ISA: {self.target.name} (needs "
            f"{' '.join(sorted(self.target.required_flags)) or 'nothing beyond the baseline'})",
        ]
        lines += [f"  {reason}" for reason in self.target.reasons]
        lines.append(f"TF_SERVING_BUILD_OPTIONS={self.build_options}")
        lines.append(f"TF_SERVING_BAZEL_OPTIONS={self.bazel_options}")
        lines += [f"  {line}" for line in self.resources.explain()]
        lines += [
            f"  --remote_cache={self.cache.url}: Bazel cache server ({self.cache.image}) on "
            f"volume {self.cache.volume}; the build joins its network namespace, since the "
            "legacy builder cannot mount a cache volume into RUN",
            "  reused on a rebuild with other ISA flags: toolchain and source layers (Docker "
            "layer cache), exec-configuration actions (protoc, build tools, generators); "
            "redone: C++ compiles of the target configuration; not cached: external downloads",
            f"bazel build $TF_SERVING_BAZEL_OPTIONS --verbose_failures $TF_SERVING_BUILD_OPTIONS "
            f"{TARGET_LABEL}",
        ]
        for step in (self.devel, self.runtime):
            lines.append(f"image {step.tag} ({step.dockerfile_name})")
            lines += [f"  build-arg {k}={v}" for k, v in step.build_args.items()]
            lines += [f"  label {k}={v}" for k, v in sorted(step.labels.items())]
        if self.request.no_cache:
            lines.append("Docker layer cache: off (--no-cache); the Bazel cache still serves")
        lines += [f"warning: {warning}" for warning in self.warnings]
        return lines


def check_version(version: str | None, *, local_source: bool) -> str:
    """A pinned tag or commit (a local tree may use any tag-safe name); never a moving ref."""
    if version is None or not version.strip():
        if local_source:
            raise UsageError(
                "--source needs --version: name the version of that tree (it goes into the "
                "image tag and labels)",
                hint="e.g. --version 2.20.0, or the commit the tree was checked out at",
            )
        return DEFAULT_VERSION
    version = version.strip()
    if version.lower() in _MOVING_REFS or re.match(r"^r\d+\.\d+$", version):
        raise UsageError(
            f"--version {version} is a moving reference (a branch or master's tip); builds "
            "must be reproducible",
            hint=f"pass a release tag such as {DEFAULT_VERSION} or a commit hash",
        )
    if not _DOCKER_TAG.match(version):
        raise UsageError(
            f"--version {version!r} cannot be part of an image tag",
            hint="use letters, digits, '.', '_' and '-' only",
        )
    if not local_source and not (_VERSION_TAG.match(version) or _COMMIT.match(version)):
        raise UsageError(
            f"--version {version} is neither a release tag (like {DEFAULT_VERSION}) nor a "
            "commit hash",
            hint="see the tags of tensorflow/serving; branches are refused because they move",
        )
    return version


def image_tags(repository: str, version: str, target: IsaTarget) -> tuple[str, str]:
    """(devel tag, runtime tag): ``<repo>:<version>-<isa>[-devel]``."""
    runtime = f"{repository}:{version}-{target.slug}"
    return f"{runtime}-devel", runtime


def plan_optimized_build(request: BuildRequest, facts: BuildFacts) -> OptimizedBuildPlan:
    """Everything a build will do, worked out without touching Docker."""
    if request.toolchain not in TOOLCHAINS:
        raise UsageError(
            f"--toolchain {request.toolchain}: expected one of {', '.join(TOOLCHAINS)}"
        )
    local = request.source is not None
    version = check_version(request.version, local_source=local)
    warnings: list[str] = []
    if (
        request.source is not None
        and not (request.source / "WORKSPACE").is_file()
        and not (request.source / "MODULE.bazel").is_file()
    ):
        raise UsageError(
            f"--source {request.source} is not a Bazel workspace (no WORKSPACE or MODULE.bazel)",
            hint="point it at a tensorflow/serving checkout",
        )
    if request.toolchain == "debian" and not local:
        warnings.append(
            f"Debian's bazel-bootstrap is Bazel {DEBIAN_BAZEL}; tensorflow/serving 2.x needs "
            f"Bazel {UPSTREAM_BAZEL} (--toolchain upstream)"
        )
    if facts.host_cpu.arch != facts.arch:
        raise UsageError(
            f"the CPU read for the build host is {facts.host_cpu.arch}, the engine is {facts.arch}",
        )
    target = resolve_target(request.target, facts.host_cpu)
    warnings += target.warnings
    resources = size_bazel(facts.memory_bytes, facts.cpus, jobs=request.jobs)
    if not resources.fits:
        warnings.append(
            f"estimated peak {resources.estimated_peak_mb / 1024:.1f} GiB exceeds the engine's "
            f"{resources.engine_memory_mb / 1024:.1f} GiB: a real TensorFlow Serving build is "
            "likely to fail with `internal compiler error: Killed (program cc1plus)`; give the "
            "engine more memory or lower --jobs"
        )
    cache = CachePlan(request.cache_volume, CACHE_PORT, facts.base_image)
    if request.toolchain == "upstream":
        base, runtime_base, bazel = UPSTREAM_BASE, UPSTREAM_BASE, UPSTREAM_BAZEL
    else:
        base, runtime_base, bazel = facts.base_image, facts.base_image, DEBIAN_BAZEL
    variant = DockerfileVariant(
        request.toolchain,
        "context" if local else "download",
        base,
        runtime_base,
        bazel,
        "arm64" if facts.arch == "aarch64" else "x86_64",
    )
    devel_text, runtime_text = render_dockerfiles(
        variant, repository=request.repository, default_version=version, default_isa=target.slug
    )
    devel_tag, runtime_tag = image_tags(request.repository, version, target)
    build_options = " ".join(target.build_options)
    bazel_options = " ".join((*resources.options, *cache.options, *request.extra_bazel_options))
    if request.source is not None:
        source_description = (
            f"local tree {request.source} (sha256:{tree_digest(request.source)[:16]})"
        )
    else:
        source_description = f"the tensorflow/serving tarball of {version}"
    created = facts.now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {
        LABEL_MANAGED: "true",
        LABEL_TFSERVING_VERSION: version,
        LABEL_TFSERVING_SOURCE: source_description,
        LABEL_BUILD_OPTIONS: build_options,
        LABEL_BUILD_DATE: created,
        LABEL_BUILD_TOOLCHAIN: variant.name,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": created,
        **isa_labels(target),
        **request.extra_labels,
    }
    devel = ImageStep(
        devel_tag,
        DEVEL_DOCKERFILE,
        devel_text,
        {
            "TF_SERVING_VERSION_GIT_COMMIT": version,
            "TF_SERVING_BUILD_OPTIONS": build_options,
            "TF_SERVING_BAZEL_OPTIONS": bazel_options,
        },
        {**common, LABEL_ROLE: "tfserving-devel"},
        source=request.source,
        network_via_cache=True,
    )
    runtime = ImageStep(
        runtime_tag,
        RUNTIME_DOCKERFILE,
        runtime_text,
        {"TF_SERVING_BUILD_IMAGE": devel_tag},
        {**common, LABEL_ROLE: "tfserving"},
    )
    return OptimizedBuildPlan(
        request=request,
        version=version,
        target=target,
        resources=resources,
        cache=cache,
        variant=variant,
        devel=devel,
        runtime=runtime,
        build_options=build_options,
        bazel_options=bazel_options,
        source_description=source_description,
        facts=facts,
        warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------- facts


def gather_facts(
    client: docker.DockerClient,
    *,
    say: Say,
    dry_run: bool,
    cpuinfo_path: Path = Path("/proc/cpuinfo"),
) -> BuildFacts:
    """Engine size and architecture, the base image, and the build host's CPU.

    The CPU is read inside the engine (a throw-away container of the base image) so a remote
    engine reports its own CPU; when a dry run finds no base image yet, the local /proc/cpuinfo
    stands in (and the plan says so).
    """

    info = client.info()
    base = plan_base_image(client, try_pull=not dry_run)
    if dry_run or base.action == "present":
        base_image = base.image
    else:
        base_image = apply_base_image(base, say=say)
    if dry_run and base.action != "present":
        host = parse_cpuinfo(cpuinfo_path.read_text())
        how = f"{cpuinfo_path} of this machine (no base image yet to probe the engine)"
    else:
        host = engine_cpu(client, probe_images=[base_image])
        how = f"/proc/cpuinfo read inside the engine via {base_image}"
    return BuildFacts(
        host_cpu=host,
        host_cpu_source=how,
        memory_bytes=int(info.get("MemTotal", 0)),
        cpus=int(info.get("NCPU", 1)),
        arch=str(info.get("Architecture", "x86_64")).replace("amd64", "x86_64"),
        base_image=base_image,
        base_image_action="present" if not dry_run else base.action,
        now=dt.datetime.now(dt.UTC),
    )


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class BazelSummary:
    """What Bazel reported at the end of a build (its INFO lines)."""

    processes: int | None = None
    remote_cache_hits: int = 0
    executed: int = 0  # actions that really ran (sandboxed or local), not cached or internal
    elapsed_s: float | None = None
    critical_path_s: float | None = None


_PROCESSES = re.compile(r"INFO: (\d+) process(?:es)?(?:: (.*?))?\.?$")
_ELAPSED = re.compile(r"INFO: Elapsed time: ([\d.]+)s, Critical Path: ([\d.]+)s")
_BAZEL_PROGRESS = re.compile(r"^\[[\d,]+ / [\d,]+\]")
_NOT_EXECUTED = ("internal", "remote cache hit", "disk cache hit")


def parse_bazel_summary(lines: Iterable[str]) -> BazelSummary:
    summary = BazelSummary()
    for raw in lines:
        line = ANSI_ESCAPE.sub("", raw).strip()
        match = _PROCESSES.search(line)
        if match:
            kinds: dict[str, int] = {}
            for part in (match.group(2) or "").split(","):
                count, _, kind = part.strip().partition(" ")
                if count.isdigit():
                    kinds[kind] = kinds.get(kind, 0) + int(count)
            summary = BazelSummary(
                int(match.group(1)),
                kinds.get("remote cache hit", 0),
                sum(n for kind, n in kinds.items() if kind not in _NOT_EXECUTED),
                summary.elapsed_s,
                summary.critical_path_s,
            )
        match = _ELAPSED.search(line)
        if match:
            summary = BazelSummary(
                summary.processes,
                summary.remote_cache_hits,
                summary.executed,
                float(match.group(1)),
                float(match.group(2)),
            )
    return summary


@dataclass(frozen=True)
class BuiltStep:
    tag: str
    image_id: str
    seconds: float
    cached_steps: int
    bazel: BazelSummary
    log: tuple[str, ...]


@dataclass(frozen=True)
class OptimizedBuildResult:
    devel: BuiltStep
    runtime: BuiltStep
    cache_stats: Mapping[str, int]  # hits/misses/uploads of the cache server during this build

    def summary(self) -> list[str]:
        bazel = self.devel.bazel
        lines = [
            f"built {self.devel.tag} in {self.devel.seconds:.1f}s "
            f"({self.devel.cached_steps} Docker steps cached)",
            f"built {self.runtime.tag} in {self.runtime.seconds:.1f}s",
        ]
        if bazel.processes is not None:
            lines.append(
                f"bazel: {bazel.processes} processes, {bazel.remote_cache_hits} remote cache hits"
                + (f", {bazel.elapsed_s:.1f}s" if bazel.elapsed_s is not None else "")
            )
        else:
            lines.append("bazel: build step reused from the Docker layer cache")
        if self.cache_stats:
            lines.append(
                "cache server: "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.cache_stats.items()))
            )
        return lines


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _source_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not d.startswith("bazel-"))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def tree_digest(root: Path) -> str:
    """A digest of a source tree's paths and contents (what the build context will carry)."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        if not path.is_symlink():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_context(step: ImageStep, out: IO[bytes]) -> str:
    """Write the step's context tar (Dockerfile + source/) to ``out``; returns the source digest.

    Members are normalised (owner root, mtime 0) so an unchanged tree hits the layer cache.
    """
    digest = hashlib.sha256()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add_bytes(tar, step.dockerfile_name, step.dockerfile.encode())
        if step.source is not None:
            for path in _source_files(step.source):
                relative = path.relative_to(step.source).as_posix()
                if path.is_symlink():
                    continue
                data = path.read_bytes()
                digest.update(relative.encode() + b"\0" + data)
                info = tarfile.TarInfo(f"source/{relative}")
                info.size = len(data)
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return digest.hexdigest()


def _oom_hint(log: Sequence[str]) -> str:
    if any("Killed" in line and "cc1plus" in line for line in log[-200:]):
        return "the compiler ran out of memory: lower --jobs or give the engine more memory"
    return "`invoke build-optimized --dry-run` shows every input of this build"


def _show_bazel(line: str, progress: BuildProgress) -> None:
    """Bazel's progress goes to the status line; its INFO summaries are printed under the step."""
    if _BAZEL_PROGRESS.match(line):
        progress.detail = line
    elif line.startswith("INFO: ") and ("processes" in line or "Elapsed" in line):
        progress.note(line)


def _build_step(
    client: docker.DockerClient,
    step: ImageStep,
    *,
    no_cache: bool,
    network_mode: str | None,
    console: Console,
) -> BuiltStep:
    progress = BuildProgress(step.tag)
    with tempfile.TemporaryFile() as context:
        build_context(step, context)
        image_id = stream_build(
            client,
            progress,
            console=console,
            handlers=(_show_bazel,),
            step_hint=_oom_hint,
            fileobj=context,
            custom_context=True,
            dockerfile=step.dockerfile_name,
            buildargs=dict(step.build_args),
            labels=dict(step.labels),
            network_mode=network_mode,
            nocache=no_cache,
        )
    return BuiltStep(
        step.tag,
        image_id,
        progress.elapsed(),
        progress.cached_steps,
        parse_bazel_summary(progress.log),
        tuple(progress.log),
    )


@contextmanager
def cache_server(
    client: docker.DockerClient, cache: CachePlan, *, labels: Mapping[str, str]
) -> Iterator[Any]:
    """The Bazel cache server on its volume, for the duration of a build; always removed."""
    try:
        client.volumes.get(cache.volume)
    except docker.errors.NotFound:
        client.volumes.create(cache.volume, labels={**labels, LABEL_ROLE: "bazel-cache"})
    name = f"tfstack-bazel-cache-{uuid.uuid4().hex[:10]}"
    container = client.containers.run(
        cache.image,
        ["python3", "-c", bazel_cache.server_source(), CACHE_MOUNT, str(cache.port)],
        name=name,
        detach=True,
        volumes={cache.volume: {"bind": CACHE_MOUNT, "mode": "rw"}},
        labels={**labels, LABEL_ROLE: "bazel-cache-server"},
    )
    try:
        deadline = time.monotonic() + 30
        while b"bazel cache serving" not in container.logs():
            container.reload()
            if container.status == "exited" or time.monotonic() > deadline:
                raise BuildError(
                    "the Bazel cache server did not start",
                    image=cache.image,
                    log_tail=container.logs().decode(errors="replace").splitlines()[-10:],
                    hint=f"the image must have python3; the volume is {cache.volume}",
                )
            time.sleep(0.2)
        yield container
    finally:
        container.remove(force=True)


def cache_stats(container: Any, port: int) -> dict[str, int]:
    """The cache server's counters, read from inside its container."""
    code = (
        "import urllib.request;"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/stats').read().decode())"
    )
    exit_code, output = container.exec_run(["python3", "-c", code])
    if exit_code != 0:
        return {}
    data = json.loads(output.decode())
    return {str(k): int(v) for k, v in data.items()}


def apply_optimized_build(
    client: docker.DockerClient,
    plan: OptimizedBuildPlan,
    *,
    console: Console | None = None,
) -> OptimizedBuildResult:
    """Build the devel image (Bazel, through the cache server), then the runtime image."""
    console = console or Console(stderr=True)
    labels = {LABEL_MANAGED: "true", **plan.request.extra_labels}
    with cache_server(client, plan.cache, labels=labels) as server:
        before = cache_stats(server, plan.cache.port)
        devel = _build_step(
            client,
            plan.devel,
            no_cache=plan.request.no_cache,
            network_mode=f"container:{server.id}",
            console=console,
        )
        after = cache_stats(server, plan.cache.port)
    runtime = _build_step(
        client, plan.runtime, no_cache=plan.request.no_cache, network_mode=None, console=console
    )
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    return OptimizedBuildResult(devel, runtime, delta)


def build_optimized(
    client: docker.DockerClient,
    request: BuildRequest,
    *,
    say: Say,
    show: Say,
    dry_run: bool,
    console: Console | None = None,
) -> tuple[OptimizedBuildPlan, OptimizedBuildResult | None]:
    """Gather the facts, plan, ``show`` the plan, and (unless ``dry_run``) build."""
    facts = gather_facts(client, say=say, dry_run=dry_run)
    plan = plan_optimized_build(request, facts)
    for line in plan.describe():
        show(line)
    if dry_run:
        return plan, None
    return plan, apply_optimized_build(client, plan, console=console)
