"""The host-side wheelhouse: pip command lines for the image's platform, idempotence, atomicity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tfstack.build.wheelhouse import (
    SERVING_API_PIN,
    TargetPlatform,
    Wheelhouse,
    apply_wheelhouse,
    download_command,
    plan_wheelhouse,
    runtime_requirements,
    source_digest,
    target_platform,
    wheel_command,
)
from tfstack.errors import BuildError, CommandFailed

BOOKWORM = TargetPlatform("3.11", (2, 36), "x86_64")
PINS = ('"tensorflow-cpu==2.21.0"', '"grpcio==1.85.3"', '"uvloop==0.23.0"')


def write_runtime(root: Path, pins: Sequence[str] = PINS) -> Path:
    runtime = root / "runtime"
    (runtime / "src" / "modelserver").mkdir(parents=True)
    (runtime / "pyproject.toml").write_text(
        f'[project]\nname = "modelserver"\nversion = "0.1.0"\ndependencies = [{", ".join(pins)}]\n'
    )
    (runtime / "src" / "modelserver" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    return runtime


class FakePip:
    """Stands in for pip: records command lines and drops a wheel per requirement into --dest."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str]) -> None:
        argv = list(argv)
        self.calls.append(argv)
        if self.fail_on and self.fail_on in argv:
            raise CommandFailed(argv, 1, ["ERROR: No matching distribution found for it"])
        if "download" in argv:
            dest = Path(argv[argv.index("--dest") + 1])
            for requirement in argv[-1:] if "--no-deps" in argv else self._requirements(argv):
                name, version = requirement.split("==")
                wheel = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
                (dest / wheel).write_bytes(b"wheel " + requirement.encode())
        else:
            dest = Path(argv[argv.index("--wheel-dir") + 1])
            (dest / "modelserver-0.1.0-py3-none-any.whl").write_bytes(b"app")

    @staticmethod
    def _requirements(argv: list[str]) -> list[str]:
        return [arg for arg in argv if "==" in arg]


def test_bookworm_platform_is_cpython_311_glibc_236() -> None:
    """Wheels are chosen for the image's python3 and glibc, whatever the engine calls its arch."""
    target = target_platform("bookworm", "amd64")
    assert target == BOOKWORM
    assert target.abi == "cp311"


def test_platform_tags_cover_every_older_manylinux() -> None:
    """pip does not expand manylinux_2_36 to older tags: the list must hold 2_36 down to 2_17 and
    the legacy aliases, and nothing newer than the base's glibc."""
    tags = BOOKWORM.platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_27_x86_64" in tags  # tensorflow-cpu 2.21
    assert "manylinux_2_17_x86_64" in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_37_x86_64" not in tags
    assert "manylinux_2_16_x86_64" not in tags


def test_aarch64_gets_no_x86_legacy_tags() -> None:
    """manylinux1/2010 exist only for x86; an arm64 engine asks for aarch64 wheels."""
    tags = target_platform("bookworm", "arm64").platform_tags()
    assert all(tag.endswith("_aarch64") for tag in tags)
    assert "manylinux2014_aarch64" in tags


@pytest.mark.parametrize(
    ("suite", "arch", "fragment"),
    [("buster", "x86_64", "Debian 'buster'"), ("bookworm", "s390x", "'s390x'")],
)
def test_unknown_platform_is_a_build_error(suite: str, arch: str, fragment: str) -> None:
    """An unknown suite or architecture fails before any download, saying which and what to do."""
    with pytest.raises(BuildError) as info:
        target_platform(suite, arch)
    assert fragment in str(info.value)
    assert info.value.hint


def test_download_command_targets_the_image_not_the_host() -> None:
    """The pip download line asks for binary wheels of cp311 on every bookworm manylinux tag."""
    argv = download_command("py", Path("/w/deps"), ["tensorflow-cpu==2.21.0"], BOOKWORM)
    assert argv[:4] == ["py", "-m", "pip", "download"]
    assert argv[argv.index("--dest") + 1] == "/w/deps"
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--implementation") + 1] == "cp"
    assert argv[argv.index("--abi") + 1] == "cp311"
    platforms = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--platform"]
    assert platforms == BOOKWORM.platform_tags()
    assert "--no-deps" not in argv
    assert argv[-1] == "tensorflow-cpu==2.21.0"


def test_download_command_no_deps() -> None:
    """tensorflow-serving-api is fetched alone: its metadata would pull the full tensorflow."""
    argv = download_command("py", Path("/w"), [SERVING_API_PIN], BOOKWORM, no_deps=True)
    assert "--no-deps" in argv
    assert argv[-1] == "tensorflow-serving-api==2.21.0"


def test_wheel_command_builds_only_the_runtime_offline() -> None:
    """The runtime wheel is built without its dependencies and without an isolated build env."""
    argv = wheel_command("py", Path("/src"), Path("/out"))
    assert argv[:4] == ["py", "-m", "pip", "wheel"]
    assert {"--no-deps", "--no-build-isolation"} <= set(argv)
    assert argv[argv.index("--wheel-dir") + 1] == "/out"
    assert argv[-1] == "/src"


def test_requirements_must_be_exact_pins(tmp_path: Path) -> None:
    """A loose dependency in runtime/pyproject.toml is refused, naming the file and the entry."""
    runtime = write_runtime(tmp_path, pins=('"grpcio==1.85.3"', '"numpy>=2"'))
    with pytest.raises(BuildError) as info:
        runtime_requirements(runtime / "pyproject.toml")
    assert "numpy>=2" in str(info.value)
    assert "pyproject.toml" in str(info.value)
    assert "grpcio" not in str(info.value).split("not pinned:")[1]


def test_source_digest_follows_sources_only(tmp_path: Path) -> None:
    """The runtime wheel is rebuilt when a source changes, not for caches or editor temp files."""
    runtime = write_runtime(tmp_path)
    before = source_digest(runtime)
    package = runtime / "src" / "modelserver"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (package / ".main.py.1234.tmp").write_text("half written")
    (runtime / "src" / "modelserver.egg-info").mkdir()
    (runtime / "src" / "modelserver.egg-info" / "PKG-INFO").write_text("x")
    assert source_digest(runtime) == before
    (package / "main.py").write_text("def main() -> None: ...\n")
    assert source_digest(runtime) != before


def test_first_run_downloads_second_run_does_nothing(tmp_path: Path) -> None:
    """Idempotence: once the manifests match the pins and source, nothing is run again."""
    runtime = write_runtime(tmp_path)
    root = tmp_path / "wheelhouse"
    plan = plan_wheelhouse(root, runtime, BOOKWORM, python="py")
    assert not plan.deps_current and not plan.app_current
    pip = FakePip()
    house = apply_wheelhouse(plan, say=lambda _: None, run=pip)
    assert [call[3] for call in pip.calls] == ["download", "download", "wheel"]
    assert "--no-deps" in pip.calls[1]
    assert house.app_wheel == "modelserver-0.1.0-py3-none-any.whl"
    assert "tensorflow_serving_api-2.21.0-py3-none-any.whl" in house.deps_wheels
    requirements = (root / "deps" / "requirements.txt").read_text().split()
    assert requirements == ["tensorflow-cpu==2.21.0", "grpcio==1.85.3", "uvloop==0.23.0"]

    again = plan_wheelhouse(root, runtime, BOOKWORM, python="py")
    assert again.deps_current and again.app_current
    idle = FakePip()
    assert apply_wheelhouse(again, say=lambda _: None, run=idle) == house
    assert idle.calls == []


def test_changed_source_rebuilds_only_the_runtime_wheel(tmp_path: Path) -> None:
    """Editing the server's code must not re-download TensorFlow."""
    runtime = write_runtime(tmp_path)
    root = tmp_path / "wheelhouse"
    apply_wheelhouse(plan_wheelhouse(root, runtime, BOOKWORM), say=lambda _: None, run=FakePip())
    (runtime / "src" / "modelserver" / "main.py").write_text("x = 1\n")
    plan = plan_wheelhouse(root, runtime, BOOKWORM, python="py")
    assert plan.deps_current and not plan.app_current
    pip = FakePip()
    apply_wheelhouse(plan, say=lambda _: None, run=pip)
    assert [call[3] for call in pip.calls] == ["wheel"]


def test_changed_pins_or_missing_wheel_download_again(tmp_path: Path) -> None:
    """A new pin, or a wheel removed from the cache, makes the dependencies stale."""
    runtime = write_runtime(tmp_path)
    root = tmp_path / "wheelhouse"
    apply_wheelhouse(plan_wheelhouse(root, runtime, BOOKWORM), say=lambda _: None, run=FakePip())
    (root / "deps" / "grpcio-1.85.3-py3-none-any.whl").unlink()
    assert not plan_wheelhouse(root, runtime, BOOKWORM).deps_current

    other = write_runtime(tmp_path / "other", pins=('"tensorflow-cpu==2.20.0"',))
    assert not plan_wheelhouse(root, other, BOOKWORM).deps_current
    trixie = TargetPlatform("3.13", (2, 41), "x86_64")
    assert not plan_wheelhouse(root, runtime, trixie).deps_current


def test_failed_download_keeps_the_previous_wheelhouse(tmp_path: Path) -> None:
    """A failing pip download leaves the last good wheels and manifest in place, no staging dirs,
    and says which pins could not be fetched."""
    runtime = write_runtime(tmp_path)
    root = tmp_path / "wheelhouse"
    apply_wheelhouse(plan_wheelhouse(root, runtime, BOOKWORM), say=lambda _: None, run=FakePip())
    manifest = (root / "deps" / "manifest.json").read_text()
    (runtime / "pyproject.toml").write_text(
        '[project]\nname = "modelserver"\nversion = "0.1.0"\n'
        'dependencies = ["tensorflow-cpu==9.9.9"]\n'
    )
    plan = plan_wheelhouse(root, runtime, BOOKWORM, python="py")
    with pytest.raises(BuildError) as info:
        apply_wheelhouse(plan, say=lambda _: None, run=FakePip(fail_on="tensorflow-cpu==9.9.9"))
    assert "No matching distribution" in str(info.value)
    assert (root / "deps" / "manifest.json").read_text() == manifest
    assert json.loads(manifest)["inputs"]["requirements"][0] == "tensorflow-cpu==2.21.0"
    assert sorted(p.name for p in root.iterdir()) == [".lock", "app", "deps"]


def test_distribution_version_reads_wheel_names() -> None:
    """The TensorFlow version recorded in labels comes from the wheel actually downloaded."""
    house = Wheelhouse(
        Path("d"),
        Path("a"),
        (
            "grpcio-1.85.3-cp311-cp311-manylinux2014_x86_64.whl",
            "tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl",
        ),
        "modelserver-0.1.0-py3-none-any.whl",
    )
    assert house.distribution_version("tensorflow-cpu") == "2.21.0"
    assert house.distribution_version("tensorflow") is None
