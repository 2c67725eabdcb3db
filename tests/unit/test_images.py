"""The runtime image's build plan and its execution against a fake docker client (no Docker)."""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import tasks
from invoke.context import MockContext
from rich.console import Console

import tfstack.build.frontend
import tfstack.build.images
import tfstack.docker.engine
from tfstack.build.baseimage import BaseImagePlan
from tfstack.build.images import (
    CONTEXT_SCRIPTS,
    BuiltImage,
    ImageBuildPlan,
    RuntimeImagePlans,
    SourceInfo,
    assembled_context,
    build_image,
    plan_runtime_image,
    source_info,
    tensorflow_version,
)
from tfstack.build.wheelhouse import TargetPlatform, WheelhousePlan
from tfstack.errors import BuildError

ROOT = Path(__file__).resolve().parents[2]
SOURCE = SourceInfo("0123456789abcdef0123456789abcdef01234567", "2026-11-27T23:00:00+00:00")


def wheelhouse_plan(root: Path, arch: str = "x86_64") -> WheelhousePlan:
    return WheelhousePlan(
        root=root / ".cache" / "wheelhouse",
        target=TargetPlatform("3.11", (2, 36), arch),
        requirements=("tensorflow-cpu==2.21.0", "grpcio==1.85.3"),
        no_deps_requirements=("tensorflow-serving-api==2.21.0",),
        runtime_dir=root / "runtime",
        runtime_digest="ab" * 32,
        deps_current=True,
        app_current=True,
    )


def make_plan(root: Path = ROOT, **kwargs: Any) -> ImageBuildPlan:
    arch = kwargs.pop("arch", "x86_64")
    return plan_runtime_image(
        root=root,
        base_image="tfstack/debian:bookworm",
        wheelhouse=wheelhouse_plan(root, arch),
        version="0.1.0",
        source=SOURCE,
        **kwargs,
    )


def test_plan_tags_version_and_latest() -> None:
    """The image is named by the runtime's version and also tagged latest; the build stops at the
    runtime stage."""
    plan = make_plan()
    assert plan.tags == ("tfstack/serving-runtime:0.1.0", "tfstack/serving-runtime:latest")
    assert plan.image == "tfstack/serving-runtime:0.1.0"
    assert plan.target == "runtime"
    assert plan.build_args == {"BASE_IMAGE": "tfstack/debian:bookworm"}
    assert not plan.no_cache
    assert make_plan(no_cache=True).no_cache


def test_build_is_offline_unless_the_base_lacks_python() -> None:
    """On tfstack's base the build runs with no network at all; only a base without python3
    (upstream's slim image) gets the default network for apt."""
    assert make_plan().network_mode == "none"
    assert "  network during the build: none" in make_plan().describe()
    assert make_plan(base_has_python=False).network_mode is None


def test_plan_labels_record_versions_revision_and_isa() -> None:
    """Labels say what the image carries: versions, source revision and time, ISA, managed."""
    labels = make_plan().labels
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.revision"] == SOURCE.revision
    assert labels["org.opencontainers.image.created"] == SOURCE.created
    assert labels["org.opencontainers.image.base.name"] == "tfstack/debian:bookworm"
    assert labels["org.tfstack.tensorflow-version"] == "2.21.0"
    assert labels["org.tfstack.isa"] == "x86_64:SSE3,SSSE3,SSE4.1,SSE4.2,AVX"
    assert labels["org.tfstack.managed"] == "true"
    assert make_plan(arch="aarch64").labels["org.tfstack.isa"] == "aarch64:unknown"


def test_plan_context_is_scripts_and_wheelhouse_only() -> None:
    """The build context holds the Dockerfile, its scripts and the wheelhouse, nothing else."""
    plan = make_plan(root=Path("/repo"))
    assert [(e.target, str(e.source)) for e in plan.context] == [
        ("Dockerfile", "/repo/runtime/docker/Dockerfile"),
        ("tf_serving_entrypoint.sh", "/repo/runtime/docker/tf_serving_entrypoint.sh"),
        ("prune.sh", "/repo/runtime/docker/prune.sh"),
        ("smoke.py", "/repo/runtime/docker/smoke.py"),
        ("overlay.py", "/repo/runtime/docker/overlay.py"),
        ("wheelhouse/deps", "/repo/.cache/wheelhouse/deps"),
        ("wheelhouse/app", "/repo/.cache/wheelhouse/app"),
    ]


def test_every_dockerfile_copy_source_is_in_the_context() -> None:
    """A COPY of a file the plan does not put in the context would fail the build late."""
    dockerfile = (ROOT / "runtime" / "docker" / "Dockerfile").read_text()
    targets = {entry.target for entry in make_plan().context}
    sources: list[str] = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "the Dockerfile has no COPY from the context"
    for source in sources:
        assert source in targets, f"COPY {source} is not in the build context"
    for name in CONTEXT_SCRIPTS:
        assert (ROOT / "runtime" / "docker" / name).is_file()


def test_describe_lists_tags_args_labels_and_context() -> None:
    """`invoke images --dry-run` shows everything the build will use."""
    text = "\n".join(make_plan(no_cache=True).describe())
    assert "tfstack/serving-runtime:0.1.0, tfstack/serving-runtime:latest" in text
    assert "build arg BASE_IMAGE=tfstack/debian:bookworm" in text
    assert "label org.tfstack.isa=x86_64:SSE3,SSSE3,SSE4.1,SSE4.2,AVX" in text
    assert "wheelhouse/deps  <- " in text
    assert "layer cache: off" in text


def test_tensorflow_version_needs_a_pin() -> None:
    """Without a TensorFlow pin the label cannot be written: a clear error, not a blank label."""
    assert tensorflow_version(["grpcio==1", "tensorflow_cpu==2.21.0"]) == "2.21.0"
    assert tensorflow_version(["tensorflow==2.20.0"]) == "2.20.0"
    with pytest.raises(BuildError, match="pin no TensorFlow version"):
        tensorflow_version(["grpcio==1.85.3"])


def fake_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    docker_dir = repo / "runtime" / "docker"
    docker_dir.mkdir(parents=True)
    for name in CONTEXT_SCRIPTS:
        (docker_dir / name).write_text(f"# {name}\n")
    for part, wheel in (
        ("deps", "tensorflow_cpu-2.21.0-x.whl"),
        ("app", "modelserver-0.1.0-x.whl"),
    ):
        directory = repo / ".cache" / "wheelhouse" / part
        directory.mkdir(parents=True)
        (directory / wheel).write_bytes(b"PK")
        (directory / "manifest.json").write_text("{}")
    return repo


def test_assembled_context_links_exactly_the_plan(tmp_path: Path) -> None:
    """The temp context holds the planned files (hard links: no 300 MB copies) and is removed."""
    repo = fake_repo(tmp_path)
    plan = make_plan(root=repo)
    with assembled_context(plan, parent=repo / ".cache") as context:
        files = sorted(p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file())
        wheel = context / "wheelhouse" / "deps" / "tensorflow_cpu-2.21.0-x.whl"
        assert (
            wheel.stat().st_ino
            == (repo / ".cache" / "wheelhouse" / "deps" / "tensorflow_cpu-2.21.0-x.whl")
            .stat()
            .st_ino
        )
    assert files == sorted(
        [
            *CONTEXT_SCRIPTS,
            "wheelhouse/deps/tensorflow_cpu-2.21.0-x.whl",
            "wheelhouse/deps/manifest.json",
            "wheelhouse/app/modelserver-0.1.0-x.whl",
            "wheelhouse/app/manifest.json",
        ]
    )
    assert not context.exists()


def test_assembled_context_reports_a_missing_file(tmp_path: Path) -> None:
    """A missing wheelhouse is a BuildError naming the path and how to make it."""
    repo = fake_repo(tmp_path)
    (repo / "runtime" / "docker" / "prune.sh").unlink()
    with pytest.raises(BuildError) as info, assembled_context(make_plan(root=repo)):
        pass
    assert "prune.sh is missing" in str(info.value)
    assert "invoke images" in str(info.value)


class FakeAPI:
    """The slice of docker.APIClient a build uses, replaying a recorded event stream."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.build_kwargs: dict[str, Any] = {}
        self.context_files: list[str] = []
        self.tags: list[tuple[str, str, str]] = []
        self.removed: list[str] = []
        self.image_filters: dict[str, Any] = {}

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.build_kwargs = kwargs
        context = Path(kwargs["path"])
        self.context_files = sorted(
            p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()
        )
        return iter(self.events)

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.tags.append((image, repository, tag))

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {"Id": image, "Size": 1_363_000_000}

    def images(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        self.image_filters = filters
        hour_ago = time.time() - 3700
        return [
            {"Id": "sha256:" + "c" * 64, "Created": time.time()},
            {"Id": "sha256:old", "Created": hour_ago},
            {"Id": "sha256:busy", "Created": hour_ago},
            {"Id": "sha256:recent", "Created": time.time() - 60},
        ]

    def remove_image(self, image: str, noprune: bool) -> None:
        if image == "sha256:busy":
            raise docker.errors.APIError("conflict: image is being used by running container")
        self.removed.append(image)


class FakeClient:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.api = FakeAPI(events)


WARM_EVENTS: list[dict[str, Any]] = [
    {"stream": "Step 1/3 : ARG BASE_IMAGE=debian:bookworm-slim\n"},
    {"stream": "Step 2/3 : FROM ${BASE_IMAGE} AS deps\n"},
    {"stream": " ---> bd03ab6b15c9\n"},
    {"stream": "Step 3/3 : RUN /opt/modelserver/bin/pip   install    x\n"},
    {"stream": " ---> Using cache\n"},
    {"stream": " ---> 1924bb068009\n"},
    {"aux": {"ID": "sha256:" + "c" * 64}},
    {"stream": "Successfully built " + "c" * 12 + "\n"},
]


def quiet_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def test_build_passes_the_plan_to_the_engine_and_tags_latest(tmp_path: Path) -> None:
    """The engine gets the plan's tag, stage, args and labels, never pulls, and the result is
    tagged latest too; size and cached steps are reported."""
    repo = fake_repo(tmp_path)
    plan = make_plan(root=repo)
    client = FakeClient(WARM_EVENTS)
    built = build_image(client, plan, console=quiet_console(), scratch=repo / ".cache")  # type: ignore[arg-type]
    kwargs = client.api.build_kwargs
    assert kwargs["tag"] == "tfstack/serving-runtime:0.1.0"
    assert kwargs["target"] == "runtime"
    assert kwargs["buildargs"] == {"BASE_IMAGE": "tfstack/debian:bookworm"}
    assert kwargs["labels"] == dict(plan.labels)
    assert kwargs["pull"] is False and kwargs["decode"] is True and kwargs["nocache"] is False
    assert kwargs["network_mode"] == "none"
    assert "Dockerfile" in client.api.context_files
    assert client.api.tags == [("sha256:" + "c" * 64, "tfstack/serving-runtime", "latest")]
    assert built.id == "sha256:" + "c" * 64
    assert built.size_bytes == 1_363_000_000
    assert built.steps == 3
    assert built.rebuilt_steps == ()
    assert "1.36 GB uncompressed" in built.summary()
    assert "all 3 steps cached" in built.summary()


def test_build_removes_runtime_images_it_superseded(tmp_path: Path) -> None:
    """Old runtime images left untagged by a rebuild are removed; the new one, any still in use
    by a container and any built within the last hour (another session may hold its id) stay."""
    repo = fake_repo(tmp_path)
    client = FakeClient(WARM_EVENTS)
    build_image(client, make_plan(root=repo), console=quiet_console(), scratch=repo / ".cache")  # type: ignore[arg-type]
    assert client.api.removed == ["sha256:old"]
    assert client.api.image_filters == {
        "dangling": True,
        "label": ["org.tfstack.managed=true", "org.tfstack.stage=runtime"],
    }


def test_steps_that_ran_are_told_apart_from_cached_ones(tmp_path: Path) -> None:
    """The report says which steps ran (a warm build must list none); FROM and ARG, which the
    builder never reports as cached, do not count as rebuilt."""
    repo = fake_repo(tmp_path)
    events: list[dict[str, Any]] = [
        {"stream": "Step 1/4 : ARG BASE_IMAGE=debian:bookworm-slim\n"},
        {"stream": "Step 2/4 : FROM ${BASE_IMAGE} AS deps\n ---> bd03ab6b15c9\n"},
        {"stream": "Step 3/4 : COPY wheelhouse/deps /wheelhouse/deps\n"},
        {"stream": " ---> Using cache\n ---> 1924bb068009\n"},
        {"stream": "Step 4/4 : RUN pip install x\n ---> Running in 3d4abf9103a9\n"},
        {"stream": "installed x\n ---> 5e6f7a8b9c0d\n"},
        {"aux": {"ID": "sha256:" + "d" * 64}},
    ]
    output = io.StringIO()
    console = Console(file=output, force_terminal=False, width=200)
    built = build_image(
        FakeClient(events),  # type: ignore[arg-type]
        make_plan(root=repo),
        console=console,
        scratch=repo / ".cache",
    )
    assert built.rebuilt_steps == ("Step 4/4 : RUN pip install x",)
    assert "1 of 4 steps rebuilt" in built.summary()
    printed = output.getvalue()
    assert "Step 3/4 : COPY wheelhouse/deps /wheelhouse/deps  [cached]" in printed
    assert re.search(r"Step 4/4 : RUN pip install x  \[\d+\.\ds\]", printed)
    assert "Step 2/4 : FROM ${BASE_IMAGE} AS deps\n" in printed


def test_failed_step_raises_build_error_with_log_tail(tmp_path: Path) -> None:
    """A failing RUN surfaces as BuildError naming the image and step, with the output's tail."""
    repo = fake_repo(tmp_path)
    events = [
        *WARM_EVENTS[:4],
        {"stream": "smoke.py: half_plus_two gave [0.0], expected [2.5, 3.0, 4.5]\n"},
        {
            "error": "The command '/bin/sh -c ...' returned a non-zero code: 1",
            "errorDetail": {"code": 1},
        },
    ]
    with pytest.raises(BuildError) as info:
        build_image(
            FakeClient(events),  # type: ignore[arg-type]
            make_plan(root=repo),
            console=quiet_console(),
            scratch=repo / ".cache",
        )
    text = str(info.value)
    assert text.startswith("tfstack/serving-runtime:0.1.0: Step 3/3 : RUN /opt/modelserver/bin/pip")
    assert "returned a non-zero code: 1" in text
    assert "half_plus_two gave [0.0]" in text
    assert info.value.log_tail[-1].startswith("smoke.py:")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_source_info_is_the_commit_and_marks_edits(tmp_path: Path) -> None:
    """The revision label is the git commit, with -dirty once runtime/ has uncommitted edits;
    created is the commit time, so an unchanged tree gives identical labels (a cached build)."""
    repo = tmp_path / "repo"
    (repo / "runtime").mkdir(parents=True)
    (repo / "runtime" / "a.py").write_text("x = 1\n")
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    env_args = ("-c", "user.name=t", "-c", "user.email=t@example.invalid")
    git(repo, *env_args, "commit", "-q", "-m", "init", "--date=2026-01-02T03:04:05+00:00")
    head = git(repo, "rev-parse", "HEAD")
    info = source_info(repo)
    assert info.revision == head
    assert info.created == git(repo, "log", "-1", "--format=%cI")
    assert source_info(repo) == info
    (repo / "elsewhere.txt").write_text("not the runtime\n")
    assert source_info(repo).revision == head
    (repo / "runtime" / "a.py").write_text("x = 2\n")
    assert source_info(repo).revision == head + "-dirty"


def test_source_info_outside_git(tmp_path: Path) -> None:
    """Without git history the revision is 'unknown' rather than a crash."""
    assert source_info(tmp_path).revision == "unknown"


def test_images_dry_run_prints_the_plans_and_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`invoke images --dry-run` prints base, wheelhouse, runtime and door plans, applies none."""
    plans = RuntimeImagePlans(
        BaseImagePlan("tfstack/debian:bookworm", "present", "bookworm"),
        wheelhouse_plan(ROOT),
        make_plan(),
    )
    seen: dict[str, Any] = {}

    def fake_plan(client: object, **kwargs: Any) -> RuntimeImagePlans:
        seen.update(kwargs)
        return plans

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run must not build")

    monkeypatch.setattr(tfstack.docker.engine, "docker_client", object)
    monkeypatch.setattr(tfstack.docker.engine, "ensure_engine", refuse)
    monkeypatch.setattr(tfstack.build.frontend, "plan_runtime_build", fake_plan)
    monkeypatch.setattr(tfstack.build.frontend, "apply_runtime_build", refuse)
    monkeypatch.setattr(tfstack.build.frontend, "build_image", refuse)
    tasks.images(MockContext(), dry_run=True, no_cache=True)
    out = capsys.readouterr().out
    assert seen == {"root": tasks.ROOT, "no_cache": True, "try_pull": False}
    assert out.startswith("base image tfstack/debian:bookworm: present\nwheelhouse ")
    assert "image tfstack/serving-runtime:0.1.0, tfstack/serving-runtime:latest" in out
    assert "image tfstack/frontend:2.6, tfstack/frontend:latest" in out
    assert out.endswith("dry run: nothing downloaded or built\n")


def runtime_plans(base: str = "tfstack/debian:bookworm") -> RuntimeImagePlans:
    return RuntimeImagePlans(
        BaseImagePlan(base, "present", "bookworm"), wheelhouse_plan(ROOT), make_plan()
    )


def test_images_plan_builds_the_door_on_the_runtime_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_images: the runtime plans, then tfstack/frontend on the same base with the mirror."""
    seen: dict[str, Any] = {}

    def fake_plan(client: object, **kwargs: Any) -> RuntimeImagePlans:
        seen.update(kwargs)
        return runtime_plans("tfstack/debian:trixie")

    monkeypatch.setattr(tfstack.build.frontend, "plan_runtime_build", fake_plan)
    plans = tfstack.build.frontend.plan_images(object(), root=ROOT, no_cache=True, try_pull=False)  # type: ignore[arg-type]
    assert seen == {"root": ROOT, "no_cache": True, "try_pull": False}
    door = plans.frontend
    assert door.tags == ("tfstack/frontend:2.6", "tfstack/frontend:latest")
    assert door.build_args == {"BASE_IMAGE": "tfstack/debian:trixie"}
    assert door.no_cache and door.network_mode is None, "apt-get reaches the Debian mirror"
    assert [e.target for e in door.context] == ["Dockerfile"]
    assert door.context[0].source == ROOT / "dockerfiles" / "frontend" / "Dockerfile"
    assert door.labels["org.opencontainers.image.base.name"] == "tfstack/debian:trixie"
    lines = plans.describe()
    assert lines[: len(plans.runtime.describe())] == plans.runtime.describe()
    assert lines[len(plans.runtime.describe()) :] == door.describe()


def test_images_apply_builds_the_runtime_then_the_door(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """apply_images: runtime build first (it makes the base), then the door; both reported."""
    order: list[str] = []
    runtime = BuiltImage("sha256:" + "1" * 64, ("tfstack/serving-runtime:0.1.0",), 1, 1.0, 3, ())
    door = BuiltImage("sha256:" + "2" * 64, ("tfstack/frontend:2.6",), 1, 1.0, 3, ())

    def fake_runtime(client: object, plans: object, **kwargs: Any) -> BuiltImage:
        order.append("runtime")
        return runtime

    def fake_build(client: object, plan: ImageBuildPlan, **kwargs: Any) -> BuiltImage:
        order.append(plan.image)
        assert kwargs["scratch"] == tmp_path / ".cache"
        return door

    monkeypatch.setattr(tfstack.build.frontend, "apply_runtime_build", fake_runtime)
    monkeypatch.setattr(tfstack.build.frontend, "build_image", fake_build)
    plans = tfstack.build.frontend.ImagesPlan(
        runtime_plans(),
        tfstack.build.frontend.plan_frontend_image(
            root=ROOT, base_image="tfstack/debian:bookworm", revision="r", created="c"
        ),
    )
    said: list[str] = []
    built = tfstack.build.frontend.apply_images(
        object(),  # type: ignore[arg-type]
        plans,
        root=tmp_path,
        say=said.append,
        console=quiet_console(),
    )
    assert built == [runtime, door]
    assert order == ["runtime", "tfstack/frontend:2.6"]
    assert said == [
        "building tfstack/frontend:2.6, tfstack/frontend:latest on tfstack/debian:bookworm"
    ]
