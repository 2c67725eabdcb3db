"""One table of TF Serving contract cases, run against every server we can start.

Targets (the same cases for each):
- ``inprocess``: modelserver in this process (no Docker);
- ``container``: the runtime image built from this checkout, in a container;
- ``reference``: the image named by ``TFSTACK_SERVING_IMAGE`` (e.g. the official
  ``tensorflow/serving`` where it can be pulled); skipped, saying so, when the variable is unset.

Models: the demo half_plus_two (label ``stable`` -> 1) and half_plus_three, generated into a
temporary repository. Containers publish on 127.0.0.1 only, mount the models read-only, carry the
label ``tfstack.test=contract`` and are removed after the module.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tfstack.models.demo import write_demo_models

pytestmark = pytest.mark.integration

LABEL = ("tfstack.test", "contract")
REFERENCE_VARIABLE = "TFSTACK_SERVING_IMAGE"
CONFIG = """model_config_list {
  config {
    name: "half_plus_two"
    base_path: "BASE/half_plus_two"
    model_platform: "tensorflow"
    version_labels { key: "stable" value: 1 }
  }
  config { name: "half_plus_three" base_path: "BASE/half_plus_three" model_platform: "tensorflow" }
  config {
    name: "upstream_half_plus_two"
    base_path: "BASE/upstream_half_plus_two"
    model_platform: "tensorflow"
  }
}
"""
MODELS = ("half_plus_two", "half_plus_three", "upstream_half_plus_two")
# Upstream's own test model (x float [-1, 1]) in its zero-padded version directory 00000123.
UPSTREAM_MODEL = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "upstream_models"
    / "saved_model_half_plus_two_cpu"
)
# Upstream refuses a label on a version that is not loaded yet, which at startup is every version.
LABELS_AT_STARTUP = "--allow_version_labels_for_unavailable_models=true"


@dataclass(frozen=True)
class Endpoint:
    rest_port: int
    grpc_port: int

    def http(self, method: str, path: str, body: str | None = None) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=30)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.getheader("content-type") or "", response.read()
        finally:
            connection.close()


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """A REST request and what the answer must satisfy (status, then a check of the body)."""

    id: str
    method: str
    path: str
    status: int
    check: Callable[[bytes, str], None]
    body: dict[str, Any] | str | None = field(default=None)


def _json(data: bytes) -> Any:
    return json.loads(data)


def _predictions(expected: list[float], key: str = "predictions") -> Callable[[bytes, str], None]:
    def check(data: bytes, content_type: str) -> None:
        assert content_type.startswith("application/json")
        assert _json(data) == {key: pytest.approx(expected)}

    return check


def _error(status_text: str, *, prefix: bool = False) -> Callable[[bytes, str], None]:
    def check(data: bytes, content_type: str) -> None:
        message = _json(data)["error"]
        assert message.startswith(status_text) if prefix else message == status_text

    return check


def _status_ok(data: bytes, content_type: str) -> None:
    assert _json(data) == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def _metadata_shape(data: bytes, content_type: str) -> None:
    document = _json(data)
    assert document["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert set(default["outputs"]) == {"y"}


def _classify(data: bytes, content_type: str) -> None:
    results = _json(data)["results"]
    assert len(results) == 2
    assert [row[0][1] for row in results] == pytest.approx([2.5, 3.0])


def _regress(data: bytes, content_type: str) -> None:
    assert _json(data) == {"results": pytest.approx([2.5, 3.0])}


def _plain_404(data: bytes, content_type: str) -> None:
    assert not content_type.startswith("application/json")
    assert b"Not Found" in data or data == b""


ROWS = {"instances": [1.0, 2.0, 5.0]}
CASES = [
    Case("status", "GET", "/v1/models/half_plus_two", 200, _status_ok),
    Case("status-by-version", "GET", "/v1/models/half_plus_two/versions/1", 200, _status_ok),
    Case("metadata", "GET", "/v1/models/half_plus_two/metadata", 200, _metadata_shape),
    Case(
        "predict-row",
        "POST",
        "/v1/models/half_plus_two:predict",
        200,
        _predictions([2.5, 3.0, 4.5]),
        ROWS,
    ),
    Case(
        "predict-columnar",
        "POST",
        "/v1/models/half_plus_two:predict",
        200,
        _predictions([2.5, 3.0], "outputs"),
        {"inputs": [1.0, 2.0]},
    ),
    Case(
        "predict-other-model",
        "POST",
        "/v1/models/half_plus_three:predict",
        200,
        _predictions([3.5, 4.0, 5.5]),
        ROWS,
    ),
    Case(
        "predict-by-version",
        "POST",
        "/v1/models/half_plus_two/versions/1:predict",
        200,
        _predictions([2.5, 3.0, 4.5]),
        ROWS,
    ),
    Case(
        "predict-by-label",
        "POST",
        "/v1/models/half_plus_two/labels/stable:predict",
        200,
        _predictions([2.5, 3.0, 4.5]),
        ROWS,
    ),
    Case(
        "classify",
        "POST",
        "/v1/models/half_plus_two:classify",
        200,
        _classify,
        {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]},
    ),
    Case(
        "regress",
        "POST",
        "/v1/models/half_plus_two:regress",
        200,
        _regress,
        {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]},
    ),
    Case(
        "unknown-model",
        "POST",
        "/v1/models/nope:predict",
        404,
        _error("Servable not found for request: Latest(nope)"),
        ROWS,
    ),
    Case(
        "unknown-version",
        "POST",
        "/v1/models/half_plus_two/versions/99:predict",
        404,
        _error("Servable not found for request: Specific(half_plus_two, 99)"),
        ROWS,
    ),
    Case(
        "unknown-label",
        "POST",
        "/v1/models/half_plus_two/labels/nope:predict",
        400,
        _error("Unrecognized servable version label: nope"),
        ROWS,
    ),
    Case(
        "bad-json",
        "POST",
        "/v1/models/half_plus_two:predict",
        400,
        _error("JSON Parse error", prefix=True),
        "{not json",
    ),
    Case(
        "malformed-path",
        "GET",
        "/v1/models/half_plus_two:predict",
        400,
        _error("Malformed request: GET /v1/models/half_plus_two:predict"),
    ),
    Case("outside-v1", "GET", "/healthz", 404, _plain_404),
]


def _status_123(data: bytes, content_type: str) -> None:
    assert _json(data)["model_version_status"] == [
        {
            "version": "123",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    ]


# Issue #16: a zero-padded version directory serves as its number, and inputs are shaped by the
# JSON alone (x declared [-1, 1] takes a flat list: upstream's testPredictREST/ColumnarREST).
CASES += [
    Case("zero-padded-status", "GET", "/v1/models/upstream_half_plus_two", 200, _status_123),
    Case(
        "zero-padded-predict-by-version",
        "POST",
        "/v1/models/upstream_half_plus_two/versions/123:predict",
        200,
        _predictions([3.0, 3.5, 4.0]),
        {"instances": [2.0, 3.0, 4.0]},
    ),
    Case(
        "flat-instances-for-a-column-input",
        "POST",
        "/v1/models/upstream_half_plus_two:predict",
        200,
        _predictions([3.0, 3.5, 4.0]),
        {"instances": [2.0, 3.0, 4.0]},
    ),
    Case(
        "flat-columnar-for-a-column-input",
        "POST",
        "/v1/models/upstream_half_plus_two:predict",
        200,
        _predictions([3.0, 3.5, 4.0], "outputs"),
        {"inputs": [2.0, 3.0, 4.0]},
    ),
]


# ----------------------------------------------------------------------------- the targets


def _wait_available(endpoint: Endpoint, alive: Callable[[], str | None], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(MODELS)
    while pending:
        problem = alive()
        if problem is not None:
            pytest.fail(problem)
        if time.monotonic() > deadline:
            pytest.fail(f"models {pending} not AVAILABLE within {timeout:.0f} s")
        try:
            status, _type, data = endpoint.http("GET", f"/v1/models/{pending[0]}")
        except OSError:
            time.sleep(0.2)
            continue
        states = [v["state"] for v in json.loads(data).get("model_version_status", [])]
        if status == 200 and "AVAILABLE" in states:
            pending.pop(0)
        else:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def model_root() -> Iterator[Path]:
    """Demo models in a directory a container's non-root user can read."""

    root = Path(tempfile.mkdtemp(prefix="tfstack-contract-"))
    try:
        write_demo_models(root / "models", include_resnet=False)
        shutil.copytree(UPSTREAM_MODEL, root / "models" / "upstream_half_plus_two")
        for name in ("half_plus_two", "half_plus_three"):
            assert (root / "models" / name / "1" / "saved_model.pb").is_file()
        (root / "config").mkdir()
        (root / "config" / "models.config").write_text(CONFIG.replace("BASE", "/models"))
        (root / "local.config").write_text(CONFIG.replace("BASE", str(root / "models")))
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _container(client: Any, image: str, root: Path) -> Iterator[Endpoint]:
    container = client.containers.run(
        image,
        command=["--model_config_file=/config/models.config", LABELS_AT_STARTUP],
        detach=True,
        ports={"8500/tcp": ("127.0.0.1", None), "8501/tcp": ("127.0.0.1", None)},
        volumes={
            str(root / "models"): {"bind": "/models", "mode": "ro"},
            str(root / "config"): {"bind": "/config", "mode": "ro"},
        },
        labels=dict([LABEL]),
    )
    try:
        deadline = time.monotonic() + 30
        ports: dict[str, Any] = {}
        while time.monotonic() < deadline:
            container.reload()
            ports = container.attrs["NetworkSettings"]["Ports"] or {}
            if (ports.get("8500/tcp") and ports.get("8501/tcp")) or container.status == "exited":
                break
            time.sleep(0.2)
        if not (ports.get("8500/tcp") and ports.get("8501/tcp")):
            pytest.fail(f"{image} did not publish its ports: {container.logs(tail=30)!r}")
        endpoint = Endpoint(
            int(ports["8501/tcp"][0]["HostPort"]), int(ports["8500/tcp"][0]["HostPort"])
        )

        def alive() -> str | None:
            container.reload()
            if container.status in ("created", "running"):
                return None
            return f"{image} exited: {container.logs(tail=30).decode(errors='replace')}"

        _wait_available(endpoint, alive, 120)
        yield endpoint
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module", params=["inprocess", "container", "reference"])
def target(request: pytest.FixtureRequest, model_root: Path) -> Iterator[Endpoint]:
    """The server under test, one per parameter."""
    kind = request.param
    if kind == "inprocess":
        from tests.unit.runtime.conftest import start_server  # noqa: PLC0415  # only this test starts the in-process runtime

        server = start_server(
            f"--model_config_file={model_root / 'local.config'}", LABELS_AT_STARTUP
        )
        try:
            yield Endpoint(server.rest_port, server.endpoints.grpc_port)
        finally:
            server.stop()
        return
    if kind == "reference" and not os.environ.get(REFERENCE_VARIABLE):
        pytest.skip(
            f"{REFERENCE_VARIABLE} is unset: set it to an image (e.g. the official "
            "tensorflow/serving) to run the contract cases against it"
        )
    client = request.getfixturevalue("docker_client")
    if kind == "container":
        image = request.getfixturevalue("runtime_image").id
    else:
        image = os.environ[REFERENCE_VARIABLE]
    yield from _container(client, image, model_root)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_rest_contract(target: Endpoint, case: Case) -> None:
    """Each REST contract case answers with upstream's status code and body shape/text."""
    body = case.body if case.body is None or isinstance(case.body, str) else json.dumps(case.body)
    status, content_type, data = target.http(case.method, case.path, body)
    assert status == case.status, data[:500]
    case.check(data, content_type)


def test_grpc_predict_contract(target: Endpoint) -> None:
    """gRPC Predict answers y = 0.5x + 2 and echoes the resolved model spec (version 1,
    signature serving_default)."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415  # TF Serving protos: TensorFlow modules

    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
        response = stub.Predict(request, 10.0)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == pytest.approx([2.5, 3.0, 4.5])
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_unknown_model_is_not_found(target: Endpoint) -> None:
    """gRPC Predict for a model that is not served fails with NOT_FOUND and upstream's text."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415  # TF Serving protos: TensorFlow modules

    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "nope"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, 10.0)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "Servable not found for request: Latest(nope)"


def _upstream_predict(target: Endpoint, tensor: Any) -> Any:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415  # TF Serving protos: TensorFlow modules

    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "upstream_half_plus_two"
        request.inputs["x"].CopyFrom(tensor)
        return stub.Predict(request, 10.0)


def test_grpc_outputs_in_float_val_from_a_zero_padded_version(target: Endpoint) -> None:
    """Upstream's VerifyPredictRequest: x=[2.0] shape [1] on x [-1,1] answers float_val [3.0]
    (typed field, not tensor_content) from version 123 (directory 00000123)."""
    from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0])
    tensor.tensor_shape.dim.add().size = 1
    response = _upstream_predict(target, tensor)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.outputs["y"].tensor_content == b""
    assert response.model_spec.version.value == 123


def test_grpc_wrong_input_dtype_is_refused(target: Endpoint) -> None:
    """An int32 tensor for a float input is refused (INVALID_ARGUMENT), never converted."""
    from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 2, 5])
    tensor.tensor_shape.dim.add().size = 3
    with pytest.raises(grpc.RpcError) as raised:
        _upstream_predict(target, tensor)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Expects arg[0] to be float but int32 is provided"
