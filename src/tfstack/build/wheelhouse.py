"""The runtime image's Python packages, downloaded on the host so image builds need no network.

``pip`` inside a build container does not trust the host's CA bundle and may have no route to an
index at all, so every wheel the runtime image installs is fetched here, on the host, for the
image's platform (Debian suite -> CPython version and glibc; engine -> CPU architecture):

- ``deps/``: the runtime's pinned dependencies (``runtime/pyproject.toml``) with everything they
  pull in, plus ``tensorflow-serving-api`` without its dependencies (its metadata requires the
  multi-GB ``tensorflow`` wheel; its protos need only protobuf, its stubs grpcio);
- ``app/``: a wheel of the runtime package itself, built from ``runtime/``.

Plan, then apply. :func:`plan_wheelhouse` compares the inputs (pins, platform, source digest) with
the manifests written by the last successful run, so a second run downloads and builds nothing.
Each part is made in a staging directory and renamed into place: a failed download never leaves a
half-filled wheelhouse behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tfstack.core.progress import Say
from tfstack.errors import BuildError, CommandFailed

SERVING_API_PIN = "tensorflow-serving-api==2.21.0"
MANIFEST = "manifest.json"
REQUIREMENTS = "requirements.txt"
# Wheel zip entries get this timestamp, so an unchanged runtime source gives a byte-identical wheel
# (and the image build's COPY layer stays cached). 1980-01-01, the earliest a zip can record.
REPRODUCIBLE_EPOCH = "315532800"

# What a Debian suite's python3 and libc are: the wheels must match them, not the host.
SUITE_PLATFORMS: dict[str, tuple[str, tuple[int, int]]] = {
    "bookworm": ("3.11", (2, 36)),
    "trixie": ("3.13", (2, 41)),
}
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


@dataclass(frozen=True)
class TargetPlatform:
    """The interpreter and platform the wheels must install on (the image's, not the host's)."""

    python_version: str  # "3.11"
    glibc: tuple[int, int]  # (2, 36)
    arch: str  # "x86_64" | "aarch64"

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    def platform_tags(self) -> list[str]:
        """Every manylinux tag this glibc accepts, newest first (pip does not expand these)."""
        major, newest = self.glibc
        tags = [f"manylinux_{major}_{minor}_{self.arch}" for minor in range(newest, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    def key(self) -> dict[str, object]:
        return {"python": self.python_version, "glibc": list(self.glibc), "arch": self.arch}


def target_platform(suite: str, engine_arch: str) -> TargetPlatform:
    """The platform of a Debian ``suite`` base image on an engine reporting ``engine_arch``."""
    if suite not in SUITE_PLATFORMS:
        raise BuildError(
            f"no wheel platform is known for Debian '{suite}'",
            hint=f"use one of {', '.join(sorted(SUITE_PLATFORMS))}, or add the suite's python3 "
            "version and glibc to tfstack.build.wheelhouse.SUITE_PLATFORMS",
        )
    arch = ARCH_ALIASES.get(engine_arch.lower())
    if arch is None:
        raise BuildError(
            f"the Docker engine runs on '{engine_arch}', for which no TensorFlow wheels exist",
            hint="build the runtime image on an x86_64 or aarch64 engine",
        )
    python_version, glibc = SUITE_PLATFORMS[suite]
    return TargetPlatform(python_version, glibc, arch)


def runtime_requirements(pyproject: Path) -> tuple[str, ...]:
    """The runtime's dependencies, each of which must be pinned exactly (``name==version``)."""
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"cannot read the runtime's dependencies from {pyproject}: {exc}") from exc
    deps = data.get("project", {}).get("dependencies", [])
    loose = [dep for dep in deps if not _PIN.match(dep.replace(" ", ""))]
    if loose:
        raise BuildError(
            f"{pyproject}: project.dependencies must pin exact versions; not pinned: "
            + ", ".join(loose),
            hint='write each as "name==version" so the image is reproducible',
        )
    return tuple(dep.replace(" ", "") for dep in deps)


def runtime_version(pyproject: Path) -> str:
    """``project.version`` of the runtime package."""
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise BuildError(f"cannot read project.version from {pyproject}: {exc}") from exc


def download_command(
    python: str,
    dest: Path,
    requirements: Sequence[str],
    target: TargetPlatform,
    *,
    no_deps: bool = False,
) -> list[str]:
    """``pip download`` of binary wheels for ``target`` (pure: unit-tested)."""
    argv = [python, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"]
    argv += ["--dest", str(dest), "--only-binary=:all:"]
    argv += ["--implementation", "cp", "--python-version", target.python_version]
    argv += ["--abi", target.abi]
    for tag in target.platform_tags():
        argv += ["--platform", tag]
    if no_deps:
        argv.append("--no-deps")
    argv += list(requirements)
    return argv


def wheel_command(python: str, source: Path, dest: Path) -> list[str]:
    """``pip wheel`` of the runtime package alone, with the build tools already installed."""
    return [
        python,
        *("-m", "pip", "wheel", "--disable-pip-version-check", "--quiet"),
        *("--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(source)),
    ]


def _is_source(relative: Path) -> bool:
    """Files a wheel is built from: not caches, build metadata, hidden or editor temp files."""
    for part in relative.parts:
        if part == "__pycache__" or part.endswith(".egg-info") or part.startswith("."):
            return False
    return not relative.name.endswith((".pyc", ".tmp", "~"))


def _source_files(runtime_dir: Path) -> list[Path]:
    files = [runtime_dir / "pyproject.toml"]
    for path in sorted((runtime_dir / "src").rglob("*")):
        if path.is_file() and _is_source(path.relative_to(runtime_dir)):
            files.append(path)
    return files


def source_digest(runtime_dir: Path) -> str:
    """A digest of everything the runtime wheel is built from (names and contents)."""
    digest = hashlib.sha256()
    for path in _source_files(runtime_dir):
        digest.update(path.relative_to(runtime_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _manifest_current(directory: Path, inputs: dict[str, object]) -> bool:
    """True when the last run had the same inputs and all its wheels are still there, unchanged."""
    manifest = _read_manifest(directory)
    if manifest is None or manifest.get("inputs") != inputs:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


@dataclass(frozen=True)
class WheelhousePlan:
    """What the wheelhouse needs: the inputs of each part and whether it is already current."""

    root: Path
    target: TargetPlatform
    requirements: tuple[str, ...]
    no_deps_requirements: tuple[str, ...]
    runtime_dir: Path
    runtime_digest: str
    deps_current: bool
    app_current: bool
    python: str = field(default=sys.executable)

    @property
    def deps_dir(self) -> Path:
        return self.root / "deps"

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    def deps_inputs(self) -> dict[str, object]:
        return {
            "requirements": list(self.requirements),
            "no_deps": list(self.no_deps_requirements),
            "platform": self.target.key(),
        }

    def app_inputs(self) -> dict[str, object]:
        return {"source_digest": self.runtime_digest}

    def describe(self) -> list[str]:
        platform = f"cp{self.target.abi[2:]} {self.target.platform_tags()[0]}"
        lines = [f"wheelhouse {self.root} for {platform}"]
        state = "current (nothing to download)" if self.deps_current else "download"
        lines.append(f"  dependencies: {state}: {' '.join(self.requirements)}")
        lines.append(f"    without their dependencies: {' '.join(self.no_deps_requirements)}")
        state = "current" if self.app_current else "build"
        lines.append(
            f"  runtime wheel: {state} from {self.runtime_dir} (source {self.runtime_digest[:12]})"
        )
        return lines


def plan_wheelhouse(
    root: Path,
    runtime_dir: Path,
    target: TargetPlatform,
    *,
    extra_no_deps: Sequence[str] = (SERVING_API_PIN,),
    python: str = sys.executable,
) -> WheelhousePlan:
    requirements = runtime_requirements(runtime_dir / "pyproject.toml")
    digest = source_digest(runtime_dir)
    plan = WheelhousePlan(
        root=root,
        target=target,
        requirements=requirements,
        no_deps_requirements=tuple(extra_no_deps),
        runtime_dir=runtime_dir,
        runtime_digest=digest,
        deps_current=False,
        app_current=False,
        python=python,
    )
    return replace(
        plan,
        deps_current=_manifest_current(plan.deps_dir, plan.deps_inputs()),
        app_current=_manifest_current(plan.app_dir, plan.app_inputs()),
    )


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse: the dependency wheels and the runtime's own wheel."""

    deps_dir: Path
    app_dir: Path
    deps_wheels: tuple[str, ...]
    app_wheel: str

    def distribution_version(self, name: str) -> str | None:
        """The version of a distribution among the dependency wheels (``tensorflow_cpu``)."""
        wanted = _normalise(name)
        for wheel in self.deps_wheels:
            dist, version = wheel.split("-")[:2]
            if _normalise(dist) == wanted:
                return version
        return None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


Runner = Callable[[Sequence[str]], None]


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise CommandFailed(argv, result.returncode, tail)


def _default_runner(argv: Sequence[str]) -> None:
    _run(argv, env=dict(os.environ, SOURCE_DATE_EPOCH=REPRODUCIBLE_EPOCH))


def _write_manifest(directory: Path, inputs: dict[str, object]) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.suffix == ".whl"}
    text = json.dumps({"inputs": inputs, "files": files}, indent=2, sort_keys=True)
    (directory / MANIFEST).write_text(text + "\n")


def _replace_dir(staging: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _wheels(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in directory.glob("*.whl")))


def apply_wheelhouse(
    plan: WheelhousePlan, *, say: Say, run: Runner = _default_runner
) -> Wheelhouse:
    """Download and build what the plan says is missing; returns the complete wheelhouse.

    Holds an exclusive lock on the wheelhouse while it works, so concurrent builds (two test
    sessions, say) take turns instead of swapping directories under each other; what the other
    process completed meanwhile is not done again.
    """
    plan.root.mkdir(parents=True, exist_ok=True)
    with (plan.root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        plan = replace(
            plan,
            deps_current=_manifest_current(plan.deps_dir, plan.deps_inputs()),
            app_current=_manifest_current(plan.app_dir, plan.app_inputs()),
        )
        return _apply_locked(plan, say=say, run=run)


def _apply_locked(plan: WheelhousePlan, *, say: Say, run: Runner) -> Wheelhouse:
    if not plan.deps_current:
        say(f"downloading wheels for {' '.join(plan.requirements)} (TensorFlow is ~250 MB)")
        staging = Path(tempfile.mkdtemp(prefix="deps.", dir=plan.root))
        try:
            run(download_command(plan.python, staging, plan.requirements, plan.target))
            if plan.no_deps_requirements:
                run(
                    download_command(
                        plan.python, staging, plan.no_deps_requirements, plan.target, no_deps=True
                    )
                )
            (staging / REQUIREMENTS).write_text("\n".join(plan.requirements) + "\n")
            _write_manifest(staging, plan.deps_inputs())
            _replace_dir(staging, plan.deps_dir)
        except CommandFailed as exc:
            raise BuildError(
                "pip download of the runtime's wheels failed",
                log_tail=exc.stderr_tail,
                hint="check the pins in runtime/pyproject.toml exist as binary wheels for "
                f"{plan.target.abi} {plan.target.arch}, and that this host can reach the index",
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not plan.app_current:
        say(f"building the runtime wheel from {plan.runtime_dir}")
        staging = Path(tempfile.mkdtemp(prefix="app.", dir=plan.root))
        # Build from a copy: an in-tree build would leave build/ and egg-info in runtime/.
        source = Path(tempfile.mkdtemp(prefix="src.", dir=plan.root))
        try:
            for path in _source_files(plan.runtime_dir):
                dest = source / path.relative_to(plan.runtime_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            run(wheel_command(plan.python, source, staging))
            _write_manifest(staging, plan.app_inputs())
            _replace_dir(staging, plan.app_dir)
        except CommandFailed as exc:
            raise BuildError(
                f"building the runtime wheel from {plan.runtime_dir} failed",
                log_tail=exc.stderr_tail,
                hint="run `pip wheel --no-deps runtime/` to see the whole error",
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True)
    app = _wheels(plan.app_dir)
    if len(app) != 1:
        raise BuildError(
            f"{plan.app_dir} holds {len(app)} wheels, expected exactly one",
            hint=f"delete {plan.app_dir} and run `invoke images` again",
        )
    return Wheelhouse(plan.deps_dir, plan.app_dir, _wheels(plan.deps_dir), app[0])


def ensure_wheelhouse(
    root: Path,
    runtime_dir: Path,
    target: TargetPlatform,
    *,
    say: Say,
) -> Wheelhouse:
    """The current wheelhouse for ``target``; downloads or builds only what changed."""
    plan = plan_wheelhouse(root, runtime_dir, target)
    for line in plan.describe():
        say(line)
    return apply_wheelhouse(plan, say=say)
