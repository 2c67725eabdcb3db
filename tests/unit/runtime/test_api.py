"""REST and gRPC API of an in-process server: shapes, predictions, labels and every error text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from .conftest import ModelFiles, RunningServer, start_server

CONFIG = """
model_config_list {{
  config {{
    name: "hp"
    base_path: "{base}/hp"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "other"
    base_path: "{base}/other"
    model_platform: "tensorflow"
  }}
}}
"""


@pytest.fixture(scope="module")
def served(models: ModelFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("api")
    models.place(base / "hp", 1, "v1")
    models.place(base / "hp", 2, "v2")
    models.place(base / "other", 7, "v1")
    (base / "models.config").write_text(CONFIG.format(base=base))
    (base / "monitoring.config").write_text(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }'
    )
    server = start_server(
        f"--model_config_file={base}/models.config",
        f"--monitoring_config_file={base}/monitoring.config",
        "--allow_version_labels_for_unavailable_models=true",
        "--rest_api_max_body_bytes=100000",
    )
    yield server
    server.stop()


def example(x: float) -> tf.train.Example:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature}))


# ----------------------------------------------------------------------------- REST


def test_rest_status_lists_versions_newest_first_with_ok_status(served: RunningServer) -> None:
    """Model status is upstream's JSON: versions as strings, newest first, an OK status object."""
    status, body = served.get_json("/v1/models/hp")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("2", "1")
        ]
    }
    assert (
        served.get_json("/v1/models/hp/versions/1")[1]["model_version_status"][0]["version"] == "1"
    )
    assert (
        served.get_json("/v1/models/hp/labels/canary")[1]["model_version_status"][0]["version"]
        == "2"
    )


def test_rest_status_errors(served: RunningServer) -> None:
    """Unknown model and unknown version give upstream's 404 texts."""
    assert served.get_json("/v1/models/nope") == (
        404,
        {"error": "Could not find any versions of model nope"},
    )
    assert served.get_json("/v1/models/hp/versions/9") == (
        404,
        {"error": "Could not find version 9 of model hp"},
    )


def test_rest_metadata_shape(served: RunningServer) -> None:
    """Metadata carries model_spec (version as string, empty signature) and the SignatureDefMap."""
    status, body = served.get_json("/v1/models/hp/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "hp", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert default["outputs"]["y"]["name"].endswith(":0")
    assert {"regress_x_to_y", "classify_x_to_y"} <= set(signatures)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/hp:predict", [3.5, 4.0]),  # latest = version 2 (+3)
        ("/v1/models/hp/versions/1:predict", [2.5, 3.0]),
        ("/v1/models/hp/labels/stable:predict", [2.5, 3.0]),
        ("/v1/models/hp/labels/canary:predict", [3.5, 4.0]),
    ],
)
def test_rest_predict_by_version_and_label(
    served: RunningServer, path: str, expected: list[float]
) -> None:
    """Predictions follow the version or label in the path; one output drops its name."""
    assert served.post_json(path, {"instances": [1.0, 2.0]}) == (200, {"predictions": expected})


def test_rest_predict_columnar_and_named_rows(served: RunningServer) -> None:
    """Columnar `inputs` answers `outputs`; row objects keyed by input name work too."""
    assert served.post_json("/v1/models/hp/versions/1:predict", {"inputs": {"x": [2.0]}}) == (
        200,
        {"outputs": [3.0]},
    )
    assert served.post_json("/v1/models/hp/versions/1:predict", {"instances": [{"x": 2.0}]}) == (
        200,
        {"predictions": [3.0]},
    )


def test_rest_classify_and_regress(served: RunningServer) -> None:
    """Classify answers [[label, score]] per example; regress one value per example."""
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]}
    assert served.post_json("/v1/models/hp/versions/1:regress", body) == (
        200,
        {"results": [3.0, 4.0]},
    )
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert served.post_json("/v1/models/hp/labels/canary:classify", body) == (
        200,
        {"results": [[["", 4.0]]]},
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        (
            "POST",
            "/v1/models/nope:predict",
            '{"instances": [1.0]}',
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "POST",
            "/v1/models/hp/versions/5:predict",
            '{"instances": [1.0]}',
            404,
            "Servable not found for request: Specific(hp, 5)",
        ),
        (
            "POST",
            "/v1/models/hp/labels/gold:predict",
            '{"instances": [1.0]}',
            400,
            "Unrecognized servable version label: gold",
        ),
        (
            "POST",
            "/v1/models/hp:predict",
            '{"signature_name": "nope", "instances": [1.0]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("GET", "/v1/models/hp:predict", None, 400, "Malformed request: GET /v1/models/hp:predict"),
        ("POST", "/v1/models/hp", "{}", 400, "Malformed request: POST /v1/models/hp"),
        (
            "POST",
            "/v1/models/hp:explain",
            "{}",
            400,
            "Malformed request: POST /v1/models/hp:explain",
        ),
        ("DELETE", "/v1/models/hp", None, 400, "Malformed request: DELETE /v1/models/hp"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ],
)
def test_rest_error_texts(  # noqa: PLR0917 (parametrized cases)
    served: RunningServer, method: str, path: str, body: str | None, status: int, error: str
) -> None:
    """Errors are {"error": text} with upstream's texts and the HTTP code of their TF code."""
    got_status, data = served.request(method, path, body)
    assert (got_status, json.loads(data)) == (status, {"error": error})


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"instances": "x"}',
        '{"instances": [[[[' * 500 + "]]]]" * 500 + "}",
        '{"instances": ["a", "b"]}',
        '{"instances": [{"b64": "!!!not base64"}]}',
        "\x1f\x8b\x08\x00" + "\x00" * 50,
    ],
)
def test_rest_hostile_predict_bodies_get_400(served: RunningServer, body: str) -> None:
    """Malformed JSON, deep nesting, wrong dtypes and gzip bytes are 400 JSON errors."""
    status, data = served.request("POST", "/v1/models/hp:predict", body)
    assert status == 400
    assert isinstance(json.loads(data)["error"], str)
    assert served.post_json("/v1/models/hp:predict", {"instances": [0.0]})[0] == 200


def test_rest_bad_json_mentions_parse_error(served: RunningServer) -> None:
    """Unparseable JSON answers `JSON Parse error: ...`."""
    status, data = served.request("POST", "/v1/models/hp:predict", "{oops")
    assert status == 400
    assert json.loads(data)["error"].startswith("JSON Parse error")


def test_rest_body_over_limit_is_413(served: RunningServer) -> None:
    """A body beyond --rest_api_max_body_bytes is refused with 413 and a JSON error."""
    status, data = served.request("POST", "/v1/models/hp:predict", b"[" * 200_000)
    assert status == 413
    assert "exceeds the limit" in json.loads(data)["error"]


def test_rest_paths_outside_v1_are_plain_404(served: RunningServer) -> None:
    """Paths outside /v1/ answer 404 without a JSON body."""
    status, data = served.request("GET", "/healthz")
    assert status == 404
    assert b"Not Found" in data


def test_prometheus_metrics(served: RunningServer) -> None:
    """The monitoring path serves upstream metric names with model and status labels."""
    served.post_json("/v1/models/hp:predict", {"instances": [1.0]})
    served.request("POST", "/v1/models/hp/labels/gold:predict", '{"instances": [1.0]}')
    status, data = served.request("GET", "/monitoring/prometheus/metrics")
    text = data.decode()
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="hp",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="hp",status="INVALID_ARGUMENT"}' in text
    assert (
        ':tensorflow:serving:request_latency_bucket{model_name="hp",API="predict",'
        'entrypoint="REST",le="+Inf"}' in text
    )
    assert ':tensorflow:cc:saved_model:load_attempt_count{model_path="' in text


# ----------------------------------------------------------------------------- gRPC


def _predict_request(name: str, values: list[float], **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    if "signature" in spec:
        request.model_spec.signature_name = spec["signature"]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(values, dtype=np.float32)))
    return request


def test_grpc_predict_echoes_resolved_model_spec(served: RunningServer) -> None:
    """Predict answers the outputs and the resolved name, version and default signature."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    response = stub.Predict(_predict_request("hp", [1.0, 2.0, 5.0]), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.5, 4.0, 5.5]
    assert response.model_spec.name == "hp"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    by_label = stub.Predict(_predict_request("hp", [2.0], label="stable"), timeout=10)
    assert tf.make_ndarray(by_label.outputs["y"]).tolist() == [3.0]
    assert by_label.model_spec.version.value == 1


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (
            _predict_request("nope", [1.0]),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            _predict_request("hp", [1.0], version=9),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(hp, 9)",
        ),
        (
            _predict_request("hp", [1.0], label="gold"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: gold",
        ),
        (
            _predict_request("hp", [1.0], signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_grpc_predict_errors(
    served: RunningServer, request_: Any, code: grpc.StatusCode, text: str
) -> None:
    """gRPC errors carry the TF status code and upstream's text."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request_, timeout=10)
    assert caught.value.code() == code
    assert caught.value.details() == text


def test_grpc_hostile_tensors_are_invalid_argument(served: RunningServer) -> None:
    """Wrong dtype, extra inputs and huge declared shapes are INVALID_ARGUMENT, not crashes."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    wrong_dtype = _predict_request("hp", [1.0])
    wrong_dtype.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(["a"])))
    extra = _predict_request("hp", [1.0])
    extra.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([1.0], dtype=np.float32)))
    huge = _predict_request("hp", [1.0])
    huge.inputs["x"].Clear()
    huge.inputs["x"].dtype = tf.float32.as_datatype_enum
    huge.inputs["x"].tensor_shape.dim.add().size = 1 << 40
    for request in (wrong_dtype, extra, huge):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "Missing but required: {}" in _details(stub, extra)


def _details(stub: Any, request: Any) -> str:
    try:
        stub.Predict(request, timeout=10)
    except grpc.RpcError as exc:
        return str(exc.details())
    raise AssertionError("the request succeeded")


def test_grpc_classify_regress_multi_inference(served: RunningServer) -> None:
    """Classify, Regress and MultiInference run tf.Example signatures and echo the model spec."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "hp"
    regress.model_spec.version.value = 1
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.extend([example(2.0), example(6.0)])
    result = stub.Regress(regress, timeout=10)
    assert [r.value for r in result.result.regressions] == [3.0, 5.0]
    assert result.model_spec.version.value == 1

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "hp"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.append(example(2.0))
    found = stub.Classify(classify, timeout=10)
    assert [(c.label, c.score) for c in found.result.classifications[0].classes] == [("", 4.0)]

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = multi.tasks.add()
        task.model_spec.name = "hp"
        task.model_spec.version.value = 1
        task.model_spec.signature_name = signature
        task.method_name = method
    multi.input.example_list.examples.append(example(4.0))
    answer = stub.MultiInference(multi, timeout=10)
    assert answer.results[0].regression_result.regressions[0].value == 4.0
    assert answer.results[1].classification_result.classifications[0].classes[0].score == 4.0


def test_grpc_metadata_requires_signature_def_field(served: RunningServer) -> None:
    """GetModelMetadata needs metadata_field ["signature_def"] and returns the SignatureDefMap."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "hp"
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelMetadata(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert "serving_default" in signatures.signature_def
    assert response.model_spec.version.value == 2


def test_grpc_model_status(served: RunningServer) -> None:
    """GetModelStatus lists versions newest first; unknown models are NOT_FOUND."""
    stub = model_service_pb2_grpc.ModelServiceStub(served.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "hp"
    response = stub.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [(2, 30), (1, 30)]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelStatus(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Could not find any versions of model nope"


def test_grpc_reload_rejects_label_on_unavailable_version(served: RunningServer) -> None:
    """Reload validates labels first: moving a label to a version not loaded changes nothing."""
    stub = model_service_pb2_grpc.ModelServiceStub(served.channel)
    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add()
    config.name = "hp"
    config.base_path = str(Path(served.flags.model_config_file).parent / "hp")
    config.model_platform = "tensorflow"
    config.model_version_policy.specific.versions.extend([1, 2])
    config.version_labels["stable"] = 3
    with pytest.raises(grpc.RpcError) as caught:
        stub.HandleReloadConfigRequest(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "Request to assign label to version 3 of model hp, which is not currently available "
        "for inference"
    )
    # Nothing changed: the other model is still served and the labels still resolve.
    assert served.post_json("/v1/models/other:predict", {"instances": [2.0]})[0] == 200
    assert served.post_json("/v1/models/hp/labels/stable:predict", {"instances": [2.0]}) == (
        200,
        {"predictions": [3.0]},
    )
    empty = model_management_pb2.ReloadConfigRequest()
    with pytest.raises(grpc.RpcError) as caught:
        stub.HandleReloadConfigRequest(empty, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_accepts_messages_over_the_default_4mb(served: RunningServer) -> None:
    """The server takes requests up to 2 GB; a client raising its own limit sends 8 MB."""
    options = [
        ("grpc.max_send_message_length", 1 << 26),
        ("grpc.max_receive_message_length", 1 << 26),
    ]
    with grpc.insecure_channel(
        f"127.0.0.1:{served.endpoints.grpc_port}", options=options
    ) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        values = np.arange(2_000_000, dtype=np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp"
        request.model_spec.version.value = 1
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
        response = stub.Predict(request, timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), values * 0.5 + 2)
