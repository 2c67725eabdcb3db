"""The runtime image itself: footprint, labels, hardening, and serving a mounted model.

The image comes from the session fixture ``runtime_image`` (a layer-cached build). Every container
started here carries TEST_LABELS and is removed at the end, even when a test fails.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from testcontainers.core.container import DockerContainer

from tfstack.build.images import BuiltImage

ROOT = Path(__file__).resolve().parents[2]
TEST_LABELS = {"org.tfstack.managed": "true", "org.tfstack.test": "test_runtime_image"}
FOOTPRINT_LIMIT_BYTES = 1_500_000_000  # targets.md #8: runtime image <= 1.5 GB uncompressed
MODEL = "half_plus_two"
READY_TIMEOUT_S = 90.0


@pytest.fixture(scope="module", autouse=True)
def remove_leftover_containers(docker_client: docker.DockerClient) -> Iterator[None]:
    """Whatever happens in this module, no container it labelled survives it."""
    yield
    selector = [f"{key}={value}" for key, value in TEST_LABELS.items()]
    for container in docker_client.containers.list(all=True, filters={"label": selector}):
        container.remove(force=True)


def run_once(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    *,
    environment: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run ``command`` in a fresh labelled container (entrypoint bypassed); exit code and output."""
    container = client.containers.create(
        image,
        entrypoint=command[:1],
        command=command[1:],
        labels=TEST_LABELS,
        environment=environment or {},
    )
    try:
        container.start()
        status = container.wait(timeout=180)
        return int(status["StatusCode"]), container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)


def test_image_runs_as_a_non_root_user(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """The server runs as uid 1000 (upstream runs as root, #1759)."""
    config = docker_client.api.inspect_image(runtime_image.id)["Config"]
    assert config["User"] == "1000:1000"
    code, output = run_once(docker_client, runtime_image.id, ["id"])
    assert code == 0
    assert output.strip().startswith("uid=1000(modelserver) gid=1000(modelserver)")


def test_image_is_configured_like_the_official_one(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """Same ports, environment and entrypoint conventions as tensorflow/serving."""
    config = docker_client.api.inspect_image(runtime_image.id)["Config"]
    assert set(config["ExposedPorts"]) == {"8500/tcp", "8501/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MODEL_BASE_PATH"] == "/models"
    assert env["MODEL_NAME"] == "model"
    assert config["Entrypoint"] == ["/usr/bin/tf_serving_entrypoint.sh"]
    code, output = run_once(
        docker_client,
        runtime_image.id,
        ["sh", "-c", "readlink -f /usr/bin/tensorflow_model_server; command -v modelserver-probe"],
    )
    assert code == 0, output
    assert output.split() == [
        "/opt/modelserver/bin/tensorflow_model_server",
        "/opt/modelserver/bin/modelserver-probe",
    ]


def test_labels_record_versions_revision_and_isa(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """The labels name the TensorFlow version, a real commit of this repository and the ISA."""
    labels = docker_client.api.inspect_image(runtime_image.id)["Config"]["Labels"]
    assert labels["org.tfstack.managed"] == "true"
    assert labels["org.tfstack.tensorflow-version"] == "2.21.0"
    assert labels["org.tfstack.isa"] == "x86_64:SSE3,SSSE3,SSE4.1,SSE4.2,AVX"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", labels["org.opencontainers.image.created"])
    commit = labels["org.opencontainers.image.revision"].removesuffix("-dirty")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-t", commit],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.stdout.strip() == "commit"


def test_image_size_is_within_the_footprint_target(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """targets.md #8: the runtime image is at most 1.5 GB uncompressed."""
    size = int(docker_client.api.inspect_image(runtime_image.id)["Size"])
    print(f"runtime image {runtime_image.image}: {size / 1e9:.3f} GB uncompressed")
    assert size == runtime_image.size_bytes
    assert size <= FOOTPRINT_LIMIT_BYTES


def test_image_holds_no_compiler_installer_or_build_inputs(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """Nothing to build or install software with, and no wheelhouse or headers left behind."""
    script = (
        "for tool in gcc cc c++ g++ clang ld as make pip pip3; do "
        '  command -v "$tool" && exit 1; '
        "done; "
        "/opt/modelserver/bin/python -c 'import pip' 2>/dev/null && exit 2; "
        "for path in /wheelhouse /build /overlay "
        "  /opt/modelserver/lib/python3.11/site-packages/tensorflow/include; do "
        '  test -e "$path" && echo "$path" && exit 3; '
        "done; exit 0"
    )
    code, output = run_once(docker_client, runtime_image.id, ["sh", "-c", script])
    assert code == 0, f"found {output.strip()} (exit {code})"


def test_server_reports_its_versions(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """`tensorflow_model_server --version` works in the image and names the TF it carries."""
    code, output = run_once(
        docker_client, runtime_image.id, ["tensorflow_model_server", "--version"]
    )
    assert code == 0, output
    assert "TensorFlow ModelServer: 0.1.0" in output
    assert "TensorFlow Library: 2.21.0" in output


def test_isa_label_matches_what_tensorflow_reports(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> None:
    """TensorFlow lists the instructions this CPU has but the wheel was not compiled for; none of
    the label's baseline may be among them (else the label claims a feature the wheel lacks)."""
    labels = docker_client.api.inspect_image(runtime_image.id)["Config"]["Labels"]
    baseline = labels["org.tfstack.isa"].split(":", 1)[1].split(",")
    code, output = run_once(
        docker_client,
        runtime_image.id,
        ["python", "-c", "import tensorflow"],
        environment={"TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert code == 0, output
    match = re.search(r"To enable the following instructions: ([A-Z0-9_. ]+)", output)
    not_compiled = set(match.group(1).split()) if match else set()
    assert not_compiled.isdisjoint(baseline), (not_compiled, baseline)
    cpu_flags = Path("/proc/cpuinfo").read_text()
    if re.search(r"\bavx2\b", cpu_flags):
        # The wheel stops at AVX: on an AVX2 machine TF must say AVX2 is not used.
        assert "AVX2" in not_compiled


# --- serving a model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_repository() -> Iterator[Path]:
    """half_plus_two version 1 (y = 0.5x + 2), saved with the host's TensorFlow, readable by
    the container's uid 1000."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    class HalfPlusTwo(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])  # type: ignore[misc]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": 0.5 * x + 2.0}

    base = Path(tempfile.mkdtemp(prefix="tfstack-runtime-image-"))
    try:
        module = HalfPlusTwo()
        tf.saved_model.save(
            module, str(base / MODEL / "1"), signatures={"serving_default": module.serve}
        )
        for path in [base, *base.rglob("*")]:
            extra = stat.S_IRGRP | stat.S_IROTH
            if path.is_dir():
                extra |= stat.S_IXGRP | stat.S_IXOTH
            path.chmod(path.stat().st_mode | extra)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def hardened(image: str) -> DockerContainer:
    """A container the way tfstack runs one: read-only root, no capabilities, no new privileges,
    ports published on 127.0.0.1 only."""
    container = DockerContainer(
        image,
        labels=TEST_LABELS,
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    container.tmpfs["/tmp"] = "rw,size=64m"
    container.ports["8500/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    container.ports["8501/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    return container


def rest_url(container: DockerContainer) -> str:
    return f"http://127.0.0.1:{container.get_exposed_port(8501)}"


def wait_available(container: DockerContainer, model: str) -> dict[str, Any]:
    """Poll the model status until a version is AVAILABLE; on timeout show state and logs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = "no answer yet"
    url = f"{rest_url(container)}/v1/models/{model}"
    while time.monotonic() < deadline:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "exited":
            break
        try:
            response = requests.get(url, timeout=2)
            last = f"{response.status_code} {response.text[:300]}"
            if response.ok:
                body: dict[str, Any] = response.json()
                states = [v["state"] for v in body.get("model_version_status", [])]
                if "AVAILABLE" in states:
                    return body
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    logs = container.get_wrapped_container().logs().decode(errors="replace")[-3000:]
    pytest.fail(f"{model} not AVAILABLE within {READY_TIMEOUT_S:.0f}s; last: {last}\n{logs}")


@pytest.fixture(scope="module")
def serving(runtime_image: BuiltImage, model_repository: Path) -> Iterator[DockerContainer]:
    """The image started like the official one: MODEL_NAME set, the model under /models (ro)."""
    container = hardened(runtime_image.id).with_env("MODEL_NAME", MODEL)
    container.with_volume_mapping(str(model_repository / MODEL), f"/models/{MODEL}", "ro")
    container.start()
    try:
        wait_available(container, MODEL)
        yield container
    finally:
        container.stop()


def test_serves_a_mounted_model_over_rest(serving: DockerContainer) -> None:
    """Status says version 1 AVAILABLE; a row-format predict returns 0.5x + 2."""
    base = rest_url(serving)
    status = requests.get(f"{base}/v1/models/{MODEL}", timeout=5).json()
    assert status["model_version_status"][0]["version"] == "1"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    response = requests.post(
        f"{base}/v1/models/{MODEL}:predict",
        data=json.dumps({"instances": [1.0, 2.0, 5.0]}),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_ports_are_published_on_loopback_only(serving: DockerContainer) -> None:
    """The test publishes gRPC and REST on 127.0.0.1, never on all interfaces."""
    ports = serving.get_wrapped_container().attrs["HostConfig"]["PortBindings"]
    assert {binding["HostIp"] for bindings in ports.values() for binding in bindings} == {
        "127.0.0.1"
    }


def test_probe_passes_only_for_available_models(serving: DockerContainer) -> None:
    """`modelserver-probe` (the compose healthcheck) exits 0 for the served model and non-zero
    for a model the server does not have."""
    wrapped = serving.get_wrapped_container()
    ok = wrapped.exec_run(["modelserver-probe"])
    assert ok.exit_code == 0, ok.output.decode()
    missing = wrapped.exec_run(["modelserver-probe", "--model-name", "no_such_model"])
    assert missing.exit_code != 0, missing.output.decode()


def test_appended_flags_override_and_stop_is_graceful(
    runtime_image: BuiltImage, model_repository: Path
) -> None:
    """Arguments given to the container come after the entrypoint's flags and win (as upstream);
    `docker stop` reaches the server (exec'd as PID 1), which exits 0 well before the kill."""
    container = hardened(runtime_image.id).with_command(
        ["--model_name=renamed", f"--model_base_path=/models/{MODEL}"]
    )
    container.with_volume_mapping(str(model_repository / MODEL), f"/models/{MODEL}", "ro")
    container.start()
    try:
        wait_available(container, "renamed")
        missing = requests.get(f"{rest_url(container)}/v1/models/model", timeout=5)
        assert missing.status_code == 404
        wrapped = container.get_wrapped_container()
        started = time.monotonic()
        wrapped.stop(timeout=20)
        took = time.monotonic() - started
        wrapped.reload()
        assert wrapped.attrs["State"]["ExitCode"] == 0, wrapped.logs().decode()[-2000:]
        assert took < 15, f"stop took {took:.1f}s"
    finally:
        container.stop()


UNIX_SOCKET_PREDICT = """
import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

request = predict_pb2.PredictRequest()
request.model_spec.name = "{model}"
request.inputs["x"].dtype = 1  # DT_FLOAT
request.inputs["x"].tensor_shape.dim.add().size = 3
request.inputs["x"].float_val.extend([1.0, 2.0, 5.0])
with grpc.insecure_channel("unix:{socket}") as channel:
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
print(list(answer.outputs["y"].float_val))
"""


def test_grpc_is_served_on_the_unix_socket_too(
    runtime_image: BuiltImage, model_repository: Path
) -> None:
    """--grpc_socket_path serves gRPC on a Unix socket as upstream does; a client inside the
    container reaches Predict through it (typed float_val outputs, as upstream's default)."""
    socket = "/tmp/tfserving.sock"
    container = hardened(runtime_image.id).with_command(
        [
            f"--model_name={MODEL}",
            f"--model_base_path=/models/{MODEL}",
            f"--grpc_socket_path={socket}",
        ]
    )
    container.with_volume_mapping(str(model_repository / MODEL), f"/models/{MODEL}", "ro")
    container.start()
    try:
        wait_available(container, MODEL)
        script = UNIX_SOCKET_PREDICT.format(model=MODEL, socket=socket)
        result = container.get_wrapped_container().exec_run(["python3", "-c", script])
        output = result.output.decode(errors="replace")
        assert result.exit_code == 0, output
        assert output.strip().splitlines()[-1] == "[2.5, 3.0, 4.5]", output
    finally:
        container.stop()
