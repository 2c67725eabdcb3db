"""build-optimized plans: Bazel sizing, tags, version pinning, rendered Dockerfiles, plan output."""

from __future__ import annotations

import datetime as dt
import io
import re
import tarfile
from pathlib import Path

import pytest

from tfstack.build.isa import CpuInfo, parse_cpuinfo
from tfstack.build.optimized import (
    COMMITTED_DIR,
    DEVEL_DOCKERFILE,
    RUNTIME_DOCKERFILE,
    TARGET_LABEL,
    BuildFacts,
    BuildRequest,
    DockerfileVariant,
    ImageStep,
    OptimizedBuildPlan,
    build_context,
    check_version,
    committed_variant,
    image_tags,
    parse_bazel_summary,
    plan_optimized_build,
    render_dockerfiles,
    size_bazel,
)
from tfstack.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
CPUINFO = Path(__file__).parent / "data" / "cpuinfo"
FIXTURE = ROOT / "tests" / "fixtures" / "tfserving_stub"
GIB = 1024**3
HASWELL = parse_cpuinfo((CPUINFO / "xeon_e5_2676v3_haswell.txt").read_text())
N1 = parse_cpuinfo((CPUINFO / "neoverse_n1_arm64.txt").read_text())


def facts(
    cpu: CpuInfo = HASWELL, memory: int = 24 * GIB, cpus: int = 2, arch: str = "x86_64"
) -> BuildFacts:
    return BuildFacts(
        host_cpu=cpu,
        host_cpu_source="test",
        memory_bytes=memory,
        cpus=cpus,
        arch=arch,
        base_image="tfstack/debian:bookworm",
        base_image_action="present",
        now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
    assert not pending, "dangling line continuation"
    return result


def args_of(text: str, keyword: str) -> list[str]:
    return [args for kw, args in instructions(text) if kw == keyword]


# --------------------------------------------------------------------------- Bazel sizing


def test_bazel_jobs_are_bounded_by_cpus_when_memory_is_plenty() -> None:
    resources = size_bazel(24 * GIB, 2)
    assert resources.jobs == 2
    assert resources.options == (
        "--jobs=2",
        "--local_ram_resources=22528",
        "--local_cpu_resources=2",
    )
    assert resources.estimated_peak_mb == 2048 + 2 * 2560
    assert resources.fits


def test_bazel_jobs_are_bounded_by_memory_on_a_wide_small_machine() -> None:
    """16 CPUs but 8 GiB: (8192 - 2048) // 2560 = 2 jobs, not 16 (the cc1plus OOM trap)."""
    resources = size_bazel(8 * GIB, 16)
    assert resources.jobs == 2
    assert resources.fits
    assert any("2 jobs that fit in memory" in line for line in resources.explain())


def test_tiny_engine_gets_one_job_and_a_warning_in_the_plan() -> None:
    resources = size_bazel(3 * GIB, 4)
    assert resources.jobs == 1
    assert not resources.fits
    plan = plan_optimized_build(BuildRequest(), facts(memory=3 * GIB, cpus=4))
    assert any("cc1plus" in warning for warning in plan.warnings)


def test_user_jobs_override_and_must_be_positive() -> None:
    assert size_bazel(24 * GIB, 2, jobs=1).jobs == 1
    with pytest.raises(UsageError, match="at least 1"):
        size_bazel(24 * GIB, 2, jobs=0)


# --------------------------------------------------------------------------- versions and tags


@pytest.mark.parametrize("moving", ["master", "HEAD", "r2.20", "latest", "main"])
def test_moving_references_are_refused(moving: str) -> None:
    with pytest.raises(UsageError, match="moving reference"):
        check_version(moving, local_source=False)


@pytest.mark.parametrize(
    "pinned", ["2.20.0", "2.19.0-rc0", "9d981c5c2708d23c5407c7c1e30309e6f9798874"]
)
def test_tags_and_commits_are_accepted(pinned: str) -> None:
    assert check_version(pinned, local_source=False) == pinned


def test_default_version_is_pinned_not_master() -> None:
    assert check_version(None, local_source=False) == "2.20.0"


def test_local_source_needs_a_version_but_any_tag_safe_name_is_fine() -> None:
    with pytest.raises(UsageError, match="--source needs --version"):
        check_version(None, local_source=True)
    assert check_version("0.0.0-stub", local_source=True) == "0.0.0-stub"
    with pytest.raises(UsageError, match="neither a release tag"):
        check_version("0.0.0-stub", local_source=False)


def test_tags_encode_version_and_isa() -> None:
    plan = plan_optimized_build(BuildRequest(target="x86-64-v3"), facts())
    assert image_tags("tfstack/tfserving", "2.20.0", plan.target) == (
        "tfstack/tfserving:2.20.0-x86-64-v3-devel",
        "tfstack/tfserving:2.20.0-x86-64-v3",
    )
    assert plan.runtime.tag == "tfstack/tfserving:2.20.0-x86-64-v3"
    assert plan.runtime.build_args == {"TF_SERVING_BUILD_IMAGE": plan.devel.tag}


# --------------------------------------------------------------------------- the plan


def test_plan_build_args_labels_and_output() -> None:
    """The plan carries the ISA flags, the Bazel options and labels, and prints all of them."""
    plan = plan_optimized_build(BuildRequest(target="x86-64-v3"), facts())
    args = plan.devel.build_args
    assert args["TF_SERVING_VERSION_GIT_COMMIT"] == "2.20.0"
    assert args["TF_SERVING_BUILD_OPTIONS"].startswith("--config=release ")
    assert "--copt=-mavx2" in args["TF_SERVING_BUILD_OPTIONS"].split()
    assert "--copt=-mfma" in args["TF_SERVING_BUILD_OPTIONS"].split()
    bazel = args["TF_SERVING_BAZEL_OPTIONS"].split()
    assert "--jobs=2" in bazel
    assert "--remote_cache=http://127.0.0.1:9092" in bazel
    labels = plan.runtime.labels
    assert labels["org.tfstack.isa"] == "x86-64-v3"
    assert "avx2" in labels["org.tfstack.isa.flags"].split()
    assert labels["org.tfstack.tfserving.version"] == "2.20.0"
    assert labels["org.tfstack.build.options"] == args["TF_SERVING_BUILD_OPTIONS"]
    assert labels["org.tfstack.build.date"] == "2026-01-02T03:04:05Z"
    assert "tarball of 2.20.0" in labels["org.tfstack.tfserving.source"]
    text = "\n".join(plan.describe())
    for expected in (
        "TF_SERVING_BUILD_OPTIONS=--config=release",
        "TF_SERVING_BAZEL_OPTIONS=--jobs=2",
        "estimated peak memory: 7.0 GiB",
        "--copt=-mavx2: AVX2",
        f"--verbose_failures $TF_SERVING_BUILD_OPTIONS {TARGET_LABEL}",
        "image tfstack/tfserving:2.20.0-x86-64-v3-devel (Dockerfile.devel)",
        "build-arg TF_SERVING_BUILD_IMAGE=tfstack/tfserving:2.20.0-x86-64-v3-devel",
        "volume tfstack-bazel-cache",
    ):
        assert expected in text, expected


def test_native_plan_carries_the_portability_warning() -> None:
    plan = plan_optimized_build(BuildRequest(target="native"), facts())
    assert any("SIGILL" in line for line in plan.describe() if line.startswith("warning:"))


def test_local_source_plan_uses_the_context_and_records_a_digest() -> None:
    plan = plan_optimized_build(
        BuildRequest(version="0.0.0-stub", source=FIXTURE, toolchain="debian"), facts()
    )
    assert plan.variant.source == "context"
    assert plan.devel.source == FIXTURE
    assert re.search(r"sha256:[0-9a-f]{16}\)$", plan.source_description)
    assert args_of(plan.devel.dockerfile, "COPY") == ["source/ /tensorflow-serving/"]
    assert args_of(plan.devel.dockerfile, "FROM")[0] == "tfstack/debian:bookworm AS base_build"


def test_source_that_is_not_a_workspace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a Bazel workspace"):
        plan_optimized_build(BuildRequest(version="x", source=tmp_path), facts())


def test_unknown_toolchain_is_refused() -> None:
    with pytest.raises(UsageError, match="--toolchain"):
        plan_optimized_build(BuildRequest(toolchain="conda"), facts())


def test_arm64_engine_gets_the_bazel_binary_not_the_x86_installer() -> None:
    plan = plan_optimized_build(BuildRequest(), facts(cpu=N1, arch="aarch64"))
    runs = " ".join(args_of(plan.devel.dockerfile, "RUN"))
    assert "bazel-${BAZEL_VERSION}-linux-arm64" in runs
    assert "installer-linux-x86_64" not in runs
    assert plan.target.name == "portable"
    assert "--config=release" not in plan.build_options


# --------------------------------------------------------------------------- Dockerfiles


BAZEL_LINE = re.compile(
    r"bazel build \$\{TF_SERVING_BAZEL_OPTIONS\} --verbose_failures "
    r"\$\{TF_SERVING_BUILD_OPTIONS\} tensorflow_serving/model_servers:tensorflow_model_server "
    r"&& cp bazel-bin/tensorflow_serving/model_servers/tensorflow_model_server /usr/local/bin/"
)


def build_run(devel: str) -> str:
    runs = [args for args in args_of(devel, "RUN") if "bazel build" in args]
    assert len(runs) == 1
    return runs[0]


def test_upstream_devel_dockerfile_follows_upstream() -> None:
    devel, _ = render_dockerfiles(committed_variant())
    froms = args_of(devel, "FROM")
    assert froms == [
        "ubuntu:22.04 AS base_build",
        "base_build AS binary_build",
        "binary_build AS clean_build",
    ]
    assert "BAZEL_VERSION=7.4.1" in args_of(devel, "ENV")
    runs = args_of(devel, "RUN")
    assert any("bazel-${BAZEL_VERSION}-installer-linux-x86_64.sh" in run for run in runs)
    download = next(run for run in runs if "tarball" in run)
    assert "tarball/${TF_SERVING_VERSION_GIT_COMMIT}" in download
    assert download.startswith('test -n "${TF_SERVING_VERSION_GIT_COMMIT}"')
    assert BAZEL_LINE.search(build_run(devel))
    assert any(run.startswith("bazel clean --expunge") for run in runs)
    assert "TF_SERVING_VERSION_GIT_COMMIT=2.20.0" in args_of(devel, "ARG")


def test_flag_args_are_declared_after_toolchain_and_source_layers() -> None:
    """Changing TF_SERVING_BUILD_OPTIONS must not invalidate the toolchain or source layers."""
    devel, _ = render_dockerfiles(committed_variant())
    order = instructions(devel)
    arg_at = order.index(("ARG", 'TF_SERVING_BUILD_OPTIONS="--config=release"'))
    download_at = next(i for i, (kw, a) in enumerate(order) if kw == "RUN" and "tarball" in a)
    assert download_at < arg_at


def test_offline_variant_runs_the_same_bazel_line() -> None:
    """One template: the Debian + local-source variant differs in toolchain, not in the build."""
    upstream, _ = render_dockerfiles(committed_variant())
    offline, _ = render_dockerfiles(
        DockerfileVariant("debian", "context", "base:x", "base:x", "4.2.3")
    )
    assert build_run(offline) == build_run(upstream)
    runs = " ".join(args_of(offline, "RUN"))
    assert "bazel-bootstrap" in runs
    assert "curl" not in runs
    assert "installer" not in runs


def test_runtime_dockerfile_matches_the_official_image_contract() -> None:
    _, runtime = render_dockerfiles(committed_variant(), default_isa="x86-64-v3")
    order = instructions(runtime)
    assert order[0][0] == "ARG"
    assert (
        "TF_SERVING_BUILD_IMAGE=tfstack/tfserving:${TF_SERVING_VERSION}-${TF_SERVING_ISA}-devel"
        in args_of(runtime, "ARG")
    )
    assert "TF_SERVING_ISA=x86-64-v3" in args_of(runtime, "ARG")
    assert args_of(runtime, "FROM") == ["${TF_SERVING_BUILD_IMAGE} AS build_image", "ubuntu:22.04"]
    assert args_of(runtime, "COPY") == [
        "--from=build_image /usr/local/bin/tensorflow_model_server /usr/bin/tensorflow_model_server"
    ]
    assert args_of(runtime, "EXPOSE") == ["8500", "8501"]
    assert args_of(runtime, "ENV") == ["MODEL_BASE_PATH=/models", "MODEL_NAME=model"]
    assert args_of(runtime, "USER") == ["10001:10001"]
    assert args_of(runtime, "ENTRYPOINT") == ['["/usr/bin/tf_serving_entrypoint.sh"]']
    script = next(run for run in args_of(runtime, "RUN") if "tf_serving_entrypoint" in run)
    assert "exec tensorflow_model_server --port=8500 --rest_api_port=8501" in script
    assert '--model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"' in script
    assert "ca-certificates" in " ".join(args_of(runtime, "RUN"))


def test_committed_dockerfiles_equal_a_fresh_render() -> None:
    """dockerfiles/tfserving/ is what the templates produce (`--write-dockerfiles` refreshes)."""
    devel, runtime = render_dockerfiles(committed_variant())
    assert (ROOT / COMMITTED_DIR / DEVEL_DOCKERFILE).read_text() == devel
    assert (ROOT / COMMITTED_DIR / RUNTIME_DOCKERFILE).read_text() == runtime


# --------------------------------------------------------------------------- context and logs


def test_build_context_holds_dockerfile_and_normalised_source(tmp_path: Path) -> None:
    (tmp_path / "WORKSPACE").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.cc").write_text("int main() {}\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "bazel-out").mkdir()
    (tmp_path / "bazel-out" / "junk").write_text("x")
    step = ImageStep("t:1", "Dockerfile.devel", "FROM x\n", {}, {}, source=tmp_path)
    buffer = io.BytesIO()
    build_context(step, buffer)
    with tarfile.open(fileobj=buffer) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"Dockerfile.devel", "source/WORKSPACE", "source/pkg/a.cc"}
        assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
        handle = tar.extractfile("Dockerfile.devel")
        assert handle is not None
        assert handle.read() == b"FROM x\n"


def test_bazel_summary_is_parsed_from_the_colored_build_log() -> None:
    log = [
        "\x1b[91mINFO: Elapsed time: 6.103s, Critical Path: 0.47s\n\x1b[0m",
        "\x1b[91mINFO: 12 processes: 3 remote cache hit, 7 internal, 2 processwrapper-sandbox.",
    ]
    summary = parse_bazel_summary(log)
    assert summary.processes == 12
    assert summary.remote_cache_hits == 3
    assert summary.executed == 2
    assert summary.elapsed_s == pytest.approx(6.103)
    assert summary.critical_path_s == pytest.approx(0.47)
    cold = parse_bazel_summary(["INFO: 12 processes: 7 internal, 5 processwrapper-sandbox."])
    assert (cold.remote_cache_hits, cold.executed) == (0, 5)


def test_plan_type_is_frozen() -> None:
    plan = plan_optimized_build(BuildRequest(), facts())
    assert isinstance(plan, OptimizedBuildPlan)
    with pytest.raises(AttributeError):
        plan.version = "x"  # type: ignore[misc]
