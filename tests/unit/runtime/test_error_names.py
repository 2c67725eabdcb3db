"""Client-supplied names in error messages are shortened (issue #10): a 50 KB model name echoed
whole would exceed a gRPC client's limit on status details, which then reports
RESOURCE_EXHAUSTED instead of the real NOT_FOUND. Names longer than ``ECHO_CHARS`` are shown as
``'aaaa…' (50000 characters)``; whole messages are capped at ``MAX_MESSAGE_BYTES`` UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from modelserver.errors import ECHO_CHARS, MAX_MESSAGE_BYTES, bounded, shown

from .conftest import ModelFiles, RunningServer, start_server

LONG = 50_000
SHORT_MESSAGE = 400  # every answer below must fit in this many characters


@pytest.fixture(scope="module")
def served(models: ModelFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("names") / "hp"
    models.place(base, 1)
    server = start_server("--model_name=hp", f"--model_base_path={base}")
    yield server
    server.stop()


def test_shown_keeps_short_text_and_shortens_long_text() -> None:
    """Short names stay byte-identical (upstream's texts); long ones become start…(length)."""
    assert shown("half_plus_two") == "half_plus_two"
    assert shown("a" * ECHO_CHARS) == "a" * ECHO_CHARS
    assert shown("a" * LONG) == f"'{'a' * ECHO_CHARS}…' ({LONG} characters)"


def test_bounded_caps_whole_messages() -> None:
    """A message over the cap keeps its start and says how long it was."""
    assert bounded("short") == "short"
    cut = bounded("x" * 10_000)
    assert cut.startswith("x" * MAX_MESSAGE_BYTES)
    assert cut.endswith("(message shortened from 10000 characters)")
    assert len(cut) < MAX_MESSAGE_BYTES + 60
    wide = bounded("字" * 5000)  # 3 UTF-8 bytes each: cut by bytes, not characters
    assert len(wide.encode()) < MAX_MESSAGE_BYTES + 60
    assert wide.startswith("字" * (MAX_MESSAGE_BYTES // 3))


def test_grpc_predict_with_a_50kb_model_name_is_not_found(served: RunningServer) -> None:
    """gRPC Predict for a 50 KB model name answers NOT_FOUND (not RESOURCE_EXHAUSTED), short."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "a" * LONG
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(1.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    details = caught.value.details()
    assert len(details) < SHORT_MESSAGE, details
    assert details.startswith("Servable not found for request: Latest('aaaa")
    assert f"({LONG} characters)" in details


def test_grpc_model_status_with_a_50kb_name_is_not_found(served: RunningServer) -> None:
    """GetModelStatus for a 50 KB model name answers NOT_FOUND with a short message."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "b" * LONG
    stub = model_service_pb2_grpc.ModelServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelStatus(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    details = caught.value.details()
    assert len(details) < SHORT_MESSAGE and f"({LONG} characters)" in details, details


def test_grpc_long_label_and_signature_are_shortened(served: RunningServer) -> None:
    """A 50 KB version label or signature name comes back shortened, with the right code."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp"
    request.model_spec.version_label = "l" * LONG
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert len(caught.value.details()) < SHORT_MESSAGE, caught.value.details()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp"
    request.model_spec.signature_name = "s" * LONG
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    assert len(caught.value.details()) < SHORT_MESSAGE, caught.value.details()


def test_grpc_many_long_aliases_are_capped(served: RunningServer) -> None:
    """200 extra inputs with 1 KB aliases (each shortened, the list still ~30 KB) arrive as the
    INVALID_ARGUMENT they are, capped at MAX_MESSAGE_BYTES, not as RESOURCE_EXHAUSTED."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp"
    for index in range(200):
        tensor = request.inputs[f"{index:03d}" + "z" * 1000]
        tensor.dtype = 1
        tensor.tensor_shape.dim.add().size = 1
        tensor.float_val.append(1.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = caught.value.details()
    assert details.startswith("input size does not match signature: 200!=1")
    assert len(details) < MAX_MESSAGE_BYTES + 60, len(details)


def test_rest_status_of_a_50kb_model_name_is_404(served: RunningServer) -> None:
    """GET /v1/models/<50 KB name> answers 404 with a short message."""
    status, body = served.get_json("/v1/models/" + "c" * LONG)
    assert status == 404, body
    assert len(body["error"]) < SHORT_MESSAGE, body
    assert body["error"].startswith("Could not find any versions of model 'cccc")
    assert f"({LONG} characters)" in body["error"]


def test_rest_predict_for_a_50kb_model_name_is_404(served: RunningServer) -> None:
    """POST /v1/models/<50 KB name>:predict answers 404 with a short message."""
    status, body = served.post_json("/v1/models/" + "d" * LONG + ":predict", {"instances": [1.0]})
    assert status == 404, body
    assert len(body["error"]) < SHORT_MESSAGE and f"({LONG} characters)" in body["error"], body


def test_rest_long_label_is_shortened(served: RunningServer) -> None:
    """A 50 KB version label in the URL comes back as a short 400."""
    status, body = served.post_json(
        "/v1/models/hp/labels/" + "e" * LONG + ":predict", {"instances": [1.0]}
    )
    assert status == 400, body
    assert body["error"].startswith("Unrecognized servable version label: 'eeee")
    assert len(body["error"]) < SHORT_MESSAGE, body
