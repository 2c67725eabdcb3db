"""The seed project's two ResNet clients, unchanged in spirit, against the in-process server.

The seed shipped a ``requests`` REST client (``{"instances": [{"b64": ...}]}`` to
``/v1/models/resnet:predict``) and a gRPC client (``predict_pb2`` + ``make_tensor_proto`` +
``PredictionServiceStub.Predict`` with a deadline). Both are written here the way the seed wrote
them and must keep working against modelserver serving the demo ResNet-50 SavedModel.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.runtime.conftest import RunningServer, start_server

pytestmark = pytest.mark.slow

RESNET_CLASSES = 1001


@pytest.fixture(scope="module")
def resnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models (with ResNet-50) written once into a temporary model repository."""
    from tfstack.models.demo import write_demo_models

    root = tmp_path_factory.mktemp("seed-models")
    write_demo_models(root, include_resnet=True)
    return root


@pytest.fixture(scope="module")
def resnet_server(resnet_root: Path) -> Iterator[RunningServer]:
    server = start_server("--model_name=resnet", f"--model_base_path={resnet_root / 'resnet'}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    from tfstack.models.demo import sample_jpeg

    return sample_jpeg()


def seed_rest_client(port: int, jpeg: bytes) -> dict[str, Any]:
    """The seed's REST client: base64 JPEG in a row-format request, read the first prediction."""
    import requests

    server_url = f"http://127.0.0.1:{port}/v1/models/resnet:predict"
    jpeg_b64 = base64.b64encode(jpeg).decode("utf-8")
    predict_request = '{"instances" : [{"b64": "%s"}]}' % jpeg_b64  # noqa: UP031 (as the seed)
    response = requests.post(server_url, data=predict_request, timeout=60)
    response.raise_for_status()
    prediction: dict[str, Any] = response.json()["predictions"][0]
    return prediction


def seed_grpc_client(port: int, jpeg: bytes) -> Any:
    """The seed's gRPC client: make_tensor_proto of the JPEG bytes, Predict with a deadline."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "resnet"
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(jpeg, shape=[1]))
        return stub.Predict(request, 10.0)  # 10 secs timeout
    finally:
        channel.close()


def test_seed_rest_client_reads_class_and_probabilities(
    resnet_server: RunningServer, jpeg_bytes: bytes
) -> None:
    """The seed's REST client gets one prediction with an integer class and 1001 probabilities
    that form a distribution, the class being their argmax."""
    prediction = seed_rest_client(resnet_server.rest_port, jpeg_bytes)
    assert set(prediction) == {"classes", "probabilities"}
    probabilities = prediction["probabilities"]
    assert len(probabilities) == RESNET_CLASSES
    assert all(isinstance(p, float) for p in probabilities)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(prediction["classes"], int)
    assert prediction["classes"] == max(range(RESNET_CLASSES), key=probabilities.__getitem__)


def test_seed_grpc_client_reads_outputs(resnet_server: RunningServer, jpeg_bytes: bytes) -> None:
    """The seed's gRPC client gets ``classes`` (int64, shape [1]) and ``probabilities`` (float,
    shape [1, 1001]) and the resolved model spec, within its 10 s deadline."""
    import tensorflow as tf

    response = seed_grpc_client(resnet_server.endpoints.grpc_port, jpeg_bytes)
    classes = tf.make_ndarray(response.outputs["classes"])
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert classes.dtype.name == "int64" and classes.shape == (1,)
    assert probabilities.dtype.name == "float32" and probabilities.shape == (1, RESNET_CLASSES)
    assert int(classes[0]) == int(probabilities[0].argmax())
    assert response.model_spec.name == "resnet"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_seed_clients_agree(resnet_server: RunningServer, jpeg_bytes: bytes) -> None:
    """REST and gRPC answer the same image with the same class and the same probabilities
    (REST's JSON floats round-trip to the float32 values gRPC returns)."""
    import numpy as np
    import tensorflow as tf

    rest = seed_rest_client(resnet_server.rest_port, jpeg_bytes)
    grpc_response = seed_grpc_client(resnet_server.endpoints.grpc_port, jpeg_bytes)
    assert rest["classes"] == int(tf.make_ndarray(grpc_response.outputs["classes"])[0])
    grpc_probabilities = tf.make_ndarray(grpc_response.outputs["probabilities"])[0]
    np.testing.assert_array_equal(np.asarray(rest["probabilities"], np.float32), grpc_probabilities)


def test_seed_grpc_deadline_is_enforced(resnet_server: RunningServer, jpeg_bytes: bytes) -> None:
    """A deadline shorter than one ResNet-50 run ends the call with DEADLINE_EXCEEDED instead of
    hanging (the seed relied on its deadline to bound a stuck server)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{resnet_server.endpoints.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "resnet"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg_bytes] * 8, shape=[8]))
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, 0.001)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
