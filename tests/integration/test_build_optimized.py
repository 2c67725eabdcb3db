"""build-optimized for real: devel and runtime images of the fixture workspace, cache, ISA guard.

The fixture (tests/fixtures/tfserving_stub) has upstream's target label; its binary prints the ISA
macros it was compiled with. Three builds share one fresh cache volume:

* A: x86-64-v2, cold (nothing in the Bazel cache);
* B: x86-64-v3, other ISA flags: toolchain/source layers and the exec-configuration build tool are
  reused, the target's C++ compiles are redone;
* C: x86-64-v2 again with other Bazel options (--jobs=1), so Docker re-runs the build step:
  every action must come from the Bazel cache.

Everything created is labelled with this run's id and removed at the end. Takes ~3-4 minutes on
the reference machine (most of it installing bazel-bootstrap and g++ in build A).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from tfstack.build.isa import ISA_LABEL, X86_FEATURES, check_image_isa, engine_cpu, level_flags
from tfstack.build.optimized import (
    COMMITTED_DIR,
    DEVEL_DOCKERFILE,
    BuildRequest,
    OptimizedBuildPlan,
    OptimizedBuildResult,
    apply_optimized_build,
    gather_facts,
    plan_optimized_build,
)
from tfstack.errors import StackError

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tfserving_stub"
RUN_LABEL = "org.tfstack.test-run"
VERSION = "0.0.0-stub"


@dataclass(frozen=True)
class Build:
    plan: OptimizedBuildPlan
    result: OptimizedBuildResult
    seconds: float


@dataclass(frozen=True)
class Builds:
    run_id: str
    a: Build
    b: Build
    c: Build
    base_image: str


def _cleanup(client: docker.DockerClient, run_id: str, volume: str) -> None:
    selector = {"label": f"{RUN_LABEL}={run_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for _ in range(3):  # children before parents: repeat until nothing labelled is left
        images = client.images.list(filters=selector)
        if not images:
            break
        for image in images:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
    with contextlib.suppress(docker.errors.NotFound):
        client.volumes.get(volume).remove(force=True)


@pytest.fixture(scope="module")
def builds(docker_client: docker.DockerClient) -> Iterator[Builds]:
    run_id = uuid.uuid4().hex[:12]
    volume = f"tfstack-test-bazel-{run_id}"
    labels = {RUN_LABEL: run_id}
    facts = gather_facts(docker_client, say=lambda text: None, dry_run=False)
    if facts.host_cpu.x86_level < 3:
        pytest.skip(f"needs an x86-64-v3 engine host for build B, have {facts.host_cpu.describe()}")

    def build(target: str, jobs: int | None = None) -> Build:
        request = BuildRequest(
            version=VERSION,
            target=target,
            source=FIXTURE,
            toolchain="debian",
            repository=f"tfstack-test/tfserving-{run_id}",
            jobs=jobs,
            cache_volume=volume,
            extra_labels=labels,
            # Unique per run, so an earlier run's Docker layer cannot stand in for this Bazel step.
            extra_bazel_options=(f"--build_metadata=TFSTACK_TEST_RUN={run_id}",),
        )
        plan = plan_optimized_build(request, facts)
        started = time.monotonic()
        result = apply_optimized_build(docker_client, plan)
        return Build(plan, result, time.monotonic() - started)

    try:
        a = build("x86-64-v2")
        b = build("x86-64-v3")
        c = build("x86-64-v2", jobs=1)
        for name, done in (("A", a), ("B", b), ("C", c)):
            print(f"build {name} ({done.plan.target.name}): {done.seconds:.1f}s;", end=" ")
            print("; ".join(done.result.summary()))
        yield Builds(run_id, a, b, c, facts.base_image)
    finally:
        _cleanup(docker_client, run_id, volume)


def run_server(client: docker.DockerClient, image: str, *args: str, **kwargs: object) -> str:
    output = client.containers.run(image, list(args), remove=True, **kwargs)
    return bytes(output).decode()


def macros(output: str) -> set[str]:
    line = next(line for line in output.splitlines() if line.startswith("isa_macros:"))
    return set(line.split()[1:])


def test_chosen_flags_reached_the_compiler(
    docker_client: docker.DockerClient, builds: Builds
) -> None:
    """v2 has SSE4.2 but no AVX (no --config=release); v3 has AVX, AVX2 and FMA but no AVX-512."""
    v2 = macros(run_server(docker_client, builds.a.plan.runtime.tag))
    assert {"__SSE4_2__", "__SSE4_1__", "__SSSE3__", "__POPCNT__"} <= v2
    assert not {"__AVX__", "__AVX2__", "__FMA__"} & v2
    v3 = macros(run_server(docker_client, builds.b.plan.runtime.tag))
    assert {"__AVX__", "__AVX2__", "__FMA__", "__BMI2__", "__F16C__", "__SSE4_2__"} <= v3
    assert "__AVX512F__" not in v3


def test_devel_build_ran_the_upstream_bazel_line_and_label(builds: Builds) -> None:
    """The Step Docker ran is the committed upstream Dockerfile.devel's build RUN, verbatim."""
    committed = (ROOT / COMMITTED_DIR / DEVEL_DOCKERFILE).read_text()
    run = re.search(
        r"^RUN echo \"Building with build options.*?/usr/local/bin/$", committed, re.S | re.M
    )
    assert run is not None
    expected = " ".join(run.group(0).replace("\\\n", " ").split())
    steps = [
        " ".join(line.split(" : ", 1)[1].split())
        for line in builds.a.result.devel.log
        if line.startswith("Step ") and "bazel build" in line
    ]
    assert steps == [expected]
    log = "\n".join(builds.a.result.devel.log)
    assert f"Building with build options: {builds.a.plan.build_options}" in log
    assert "//tensorflow_serving/model_servers:tensorflow_model_server up-to-date" in log


def test_runtime_image_has_the_binary_but_no_toolchain(
    docker_client: docker.DockerClient, builds: Builds
) -> None:
    """Only tensorflow_model_server is copied in: no compiler, Bazel, JDK or source; non-root."""
    script = (
        "id -u; ls -l /usr/bin/tensorflow_model_server; "
        "for tool in bazel gcc g++ cc c++ java cc1plus; do command -v $tool; done; "
        "ls /tensorflow-serving 2>&1; true"
    )
    output = run_server(
        docker_client, builds.a.plan.runtime.tag, "-c", script, entrypoint=["/bin/sh"]
    )
    lines = output.splitlines()
    assert lines[0] == "10001"
    assert lines[1].endswith("/usr/bin/tensorflow_model_server")
    assert not [
        line for line in lines if line.startswith("/") and "tensorflow_model_server" not in line
    ]
    assert "No such file or directory" in lines[-1]
    devel_tools = run_server(
        docker_client,
        builds.a.plan.devel.tag,
        "-c",
        "for t in bazel g++; do command -v $t; done",
        entrypoint=["/bin/sh"],
    )
    assert devel_tools.split() == ["/usr/bin/bazel", "/usr/bin/g++"]


def test_entrypoint_is_compatible_with_the_official_image(
    docker_client: docker.DockerClient, builds: Builds
) -> None:
    """MODEL_NAME/MODEL_BASE_PATH become flags; extra arguments are appended (last flag wins)."""
    output = run_server(
        docker_client,
        builds.a.plan.runtime.tag,
        "--enable_batching",
        "--rest_api_port=9000",
        environment={"MODEL_NAME": "half_plus_two"},
    )
    args = next(line for line in output.splitlines() if line.startswith("args:"))
    assert args.split()[1:] == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=half_plus_two",
        "--model_base_path=/models/half_plus_two",
        "--enable_batching",
        "--rest_api_port=9000",
    ]


def test_labels_and_tags_record_version_isa_flags_and_source(
    docker_client: docker.DockerClient, builds: Builds
) -> None:
    for build, isa in ((builds.a, "x86-64-v2"), (builds.b, "x86-64-v3")):
        image = docker_client.images.get(build.plan.runtime.tag)
        assert build.plan.runtime.tag == f"tfstack-test/tfserving-{builds.run_id}:{VERSION}-{isa}"
        assert build.plan.runtime.tag in image.tags
        labels = image.labels
        assert labels[ISA_LABEL] == isa
        assert set(labels["org.tfstack.isa.flags"].split()) == level_flags(int(isa[-1]))
        assert labels["org.tfstack.tfserving.version"] == VERSION
        assert labels["org.tfstack.build.options"] == build.plan.build_options
        assert labels["org.tfstack.tfserving.source"].startswith(f"local tree {FIXTURE}")
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", labels["org.tfstack.build.date"])
        devel = docker_client.images.get(build.plan.devel.tag)
        assert devel.labels[ISA_LABEL] == isa


def test_rebuilds_reuse_the_bazel_cache(builds: Builds) -> None:
    """Other ISA flags reuse layers and the build tool; other Bazel options reuse every action."""
    a, b, c = (x.result.devel for x in (builds.a, builds.b, builds.c))
    assert a.bazel.processes is not None and b.bazel.processes is not None
    assert c.bazel.processes is not None
    # A: cold.
    assert a.bazel.remote_cache_hits == 0
    assert a.bazel.executed >= 3
    # B: toolchain and source layers from Docker's cache; exec-config tool + genrule from Bazel's.
    assert b.cached_steps >= 4
    assert b.bazel.remote_cache_hits >= 2
    assert b.bazel.executed < a.bazel.executed
    # C: the Docker step re-ran (other --jobs) but Bazel ran nothing itself.
    assert c.bazel.executed == 0
    assert c.bazel.remote_cache_hits == a.bazel.executed
    assert builds.c.result.cache_stats["ac_hit"] >= a.bazel.executed
    assert a.bazel.critical_path_s is not None and c.bazel.critical_path_s is not None
    # Wall-clock totals are dominated by Bazel's start-up and the engine's load; the critical
    # path (the longest chain of actions) is what the cache removes.
    assert c.bazel.critical_path_s < a.bazel.critical_path_s / 2
    print(
        f"critical path cold {a.bazel.critical_path_s:.2f}s, other flags "
        f"{b.bazel.critical_path_s:.2f}s, cached {c.bazel.critical_path_s:.2f}s; devel build "
        f"{a.seconds:.1f}s / {b.seconds:.1f}s / {c.seconds:.1f}s"
    )


def test_isa_guard_passes_runnable_images_and_refuses_a_missing_isa(
    docker_client: docker.DockerClient, builds: Builds
) -> None:
    """An image labelled with an instruction set the engine host lacks is refused by name."""
    check_image_isa(docker_client, builds.a.plan.runtime.tag, probe_images=[builds.base_image])
    check_image_isa(docker_client, builds.b.plan.runtime.tag, probe_images=[builds.base_image])
    host = engine_cpu(docker_client, probe_images=[builds.base_image])
    absent = next(f for f in X86_FEATURES if f.copt and f.flag not in host.flags)
    claim = f"avx2,{absent.flag}"
    dockerfile = f"FROM {builds.a.plan.runtime.tag}\nLABEL {ISA_LABEL}={claim}\n".encode()
    tag = f"tfstack-test/tfserving-{builds.run_id}:lying-isa"
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile), tag=tag, labels={RUN_LABEL: builds.run_id}, rm=True
    )
    with pytest.raises(StackError) as info:
        check_image_isa(docker_client, tag, service="serving", probe_images=[builds.base_image])
    message = str(info.value)
    assert f"built for {claim}" in message
    assert f"needs {absent.name}," in message
    assert "AVX2" not in message.split("needs", 1)[1].split("which", 1)[0]
    assert "service serving" in message
