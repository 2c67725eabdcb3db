"""`docker stop` drains the runtime container (issue #10): long ResNet-50 predicts (REST and gRPC)
in flight when the stop begins all complete 200/OK, and the server exits 0 before the kill.

Upstream TF Serving ignores SIGTERM (tensorflow/serving#1853). Every container here carries
TEST_LABELS and is removed at the end, even when a test fails.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from testcontainers.core.container import DockerContainer

from tfstack.build.images import BuiltImage
from tfstack.models.demo import sample_jpeg, write_resnet

pytestmark = pytest.mark.integration

TEST_LABELS = {"org.tfstack.managed": "true", "org.tfstack.test": "test_drain"}
IMAGES_PER_REQUEST = 16
REQUESTS_EACH = 2  # REST and gRPC each
GRACE_SECONDS = 20
READY_TIMEOUT_S = 180.0


@pytest.fixture(scope="module", autouse=True)
def remove_leftover_containers(docker_client: docker.DockerClient) -> Iterator[None]:
    """Whatever happens in this module, no container it labelled survives it."""
    yield
    selector = [f"{key}={value}" for key, value in TEST_LABELS.items()]
    for container in docker_client.containers.list(all=True, filters={"label": selector}):
        container.remove(force=True)


@pytest.fixture(scope="module")
def resnet_repository() -> Iterator[Path]:
    """resnet version 1 (ResNet-50, JPEG bytes in), readable by the container's uid 1000."""
    base = Path(tempfile.mkdtemp(prefix="tfstack-drain-"))
    try:
        write_resnet(base / "resnet" / "1")
        for path in [base, *base.rglob("*")]:
            extra = stat.S_IRGRP | stat.S_IROTH
            if path.is_dir():
                extra |= stat.S_IXGRP | stat.S_IXOTH
            path.chmod(path.stat().st_mode | extra)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_available(container: DockerContainer, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.ok and "AVAILABLE" in response.text:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    logs = container.get_wrapped_container().logs().decode(errors="replace")[-3000:]
    pytest.fail(f"resnet not AVAILABLE within {READY_TIMEOUT_S:.0f}s\n{logs}")


def test_docker_stop_completes_in_flight_resnet_requests(
    runtime_image: BuiltImage, resnet_repository: Path
) -> None:
    """Long ResNet-50 predicts in flight at `docker stop` all answer 200/OK with 1001-class
    probabilities; new connections are refused during the drain; exit code 0."""
    container = DockerContainer(runtime_image.id, labels=TEST_LABELS)
    container.with_env("MODEL_NAME", "resnet")
    container.with_command([f"--shutdown_grace_seconds={GRACE_SECONDS}"])
    container.with_volume_mapping(str(resnet_repository / "resnet"), "/models/resnet", "ro")
    container.ports["8500/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    container.ports["8501/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    container.start()
    try:
        rest = f"http://127.0.0.1:{container.get_exposed_port(8501)}"
        grpc_target = f"127.0.0.1:{container.get_exposed_port(8500)}"
        _wait_available(container, f"{rest}/v1/models/resnet")
        jpeg = sample_jpeg()
        body = json.dumps(
            {"instances": [{"b64": base64.b64encode(jpeg).decode()}] * IMAGES_PER_REQUEST}
        )
        results: list[tuple[str, object]] = []
        finished: list[float] = []

        def rest_predict() -> None:
            try:
                response = requests.post(f"{rest}/v1/models/resnet:predict", data=body, timeout=60)
                predictions = response.json().get("predictions", [])
                sizes = [len(p["probabilities"]) for p in predictions]
                results.append(("REST", (response.status_code, sizes)))
            except requests.RequestException as exc:
                results.append(("REST", repr(exc)))
            finished.append(time.monotonic())

        def grpc_predict() -> None:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "resnet"
            tensor = request.inputs["image_bytes"]
            tensor.dtype = 7  # DT_STRING
            tensor.tensor_shape.dim.add().size = IMAGES_PER_REQUEST
            tensor.string_val.extend([jpeg] * IMAGES_PER_REQUEST)
            with grpc.insecure_channel(grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                try:
                    response = stub.Predict(request, timeout=60)
                    shape = [d.size for d in response.outputs["probabilities"].tensor_shape.dim]
                    results.append(("gRPC", ("OK", shape)))
                except grpc.RpcError as exc:
                    results.append(("gRPC", (exc.code().name, exc.details())))
            finished.append(time.monotonic())

        threads = [threading.Thread(target=rest_predict) for _ in range(REQUESTS_EACH)]
        threads += [threading.Thread(target=grpc_predict) for _ in range(REQUESTS_EACH)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # all requests are in the server, ResNet-50 still computing
        wrapped = container.get_wrapped_container()
        stopper = threading.Thread(target=wrapped.stop, kwargs={"timeout": GRACE_SECONDS + 10})
        stopped_at = time.monotonic()
        stopper.start()
        time.sleep(1.0)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{rest}/v1/models/resnet", timeout=2)
        for thread in threads:
            thread.join(timeout=90)
        stopper.join(timeout=GRACE_SECONDS + 20)
        took = time.monotonic() - stopped_at
        wrapped.reload()
        logs = wrapped.logs().decode(errors="replace")[-2000:]
        assert wrapped.attrs["State"]["ExitCode"] == 0, logs
        assert took < GRACE_SECONDS + 5, f"stop took {took:.1f}s\n{logs}"
        # Each request was really in flight when the stop began.
        assert min(finished) > stopped_at, [round(t - stopped_at, 1) for t in finished]
        expected_rest = (200, [1001] * IMAGES_PER_REQUEST)
        expected_grpc = ("OK", [IMAGES_PER_REQUEST, 1001])
        assert sorted(results, key=str) == sorted(
            [("REST", expected_rest)] * REQUESTS_EACH + [("gRPC", expected_grpc)] * REQUESTS_EACH,
            key=str,
        ), logs
    finally:
        container.stop()
