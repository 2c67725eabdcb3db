"""REST/gRPC client request building and JSON <-> TensorProto conversion (no server needed)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from tfstack.core.modelstatus import parse_version_status
from tfstack.errors import UsageError
from tfstack.serving.client import (
    ModelRef,
    RestClient,
    ServingRequestError,
    format_signatures,
    matches_expected,
    model_path,
)
from tfstack.serving.tensors import (
    SignatureInputs,
    Tensor,
    from_tensor_proto,
    grpc_outputs_to_rest,
    json_to_tensor,
    rest_body_to_grpc,
    signature_inputs,
    to_tensor_proto,
)

METADATA: dict[str, Any] = {
    "model_spec": {"name": "half_plus_two", "signature_name": "", "version": "1"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {
                        "x": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {
                                "dim": [{"size": "-1", "name": ""}],
                                "unknown_rank": False,
                            },
                            "name": "serving_default_x:0",
                        }
                    },
                    "outputs": {
                        "y": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {"dim": [{"size": "-1", "name": ""}]},
                            "name": "StatefulPartitionedCall:0",
                        }
                    },
                    "method_name": "tensorflow/serving/predict",
                },
                "two_inputs": {
                    "inputs": {
                        "a": {"dtype": "DT_INT64", "tensor_shape": {"dim": [{"size": "-1"}]}},
                        "b": {"dtype": "DT_STRING", "tensor_shape": {"unknown_rank": True}},
                    },
                    "outputs": {},
                    "method_name": "tensorflow/serving/predict",
                },
            }
        }
    },
}


@pytest.mark.parametrize(
    ("ref", "verb", "path"),
    [
        (ModelRef("m"), "", "/v1/models/m"),
        (ModelRef("m", version=3), "", "/v1/models/m/versions/3"),
        (ModelRef("m", label="stable"), "predict", "/v1/models/m/labels/stable:predict"),
        (ModelRef("m", version=2), "metadata", "/v1/models/m/versions/2/metadata"),
        (ModelRef("m"), "regress", "/v1/models/m:regress"),
    ],
)
def test_model_path(ref: ModelRef, verb: Any, path: str) -> None:
    """REST paths follow TF Serving's URL scheme for versions, labels and verbs."""
    assert model_path(ref, verb) == path


def test_version_and_label_together_is_a_usage_error() -> None:
    """A request cannot pin a version and a label at once."""
    with pytest.raises(UsageError, match="not both"):
        ModelRef("m", version=1, label="stable")


def test_parse_version_status_sorts_and_reads_errors() -> None:
    """model_version_status entries become typed states (versions are JSON strings upstream)."""
    states = parse_version_status(
        {
            "model_version_status": [
                {
                    "version": "2",
                    "state": "END",
                    "status": {"error_code": "NOT_FOUND", "error_message": "bad"},
                },
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                },
            ]
        }
    )
    assert [(s.version, s.state) for s in states] == [(1, "AVAILABLE"), (2, "END")]
    assert states[0].available and not states[0].failed
    assert states[1].failed and states[1].error_message == "bad"


class RecordingAdapter(BaseAdapter):
    """A requests transport answering canned responses and recording each request."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[requests.PreparedRequest] = []

    def send(  # type: ignore[override]  # the test transport ignores stream/timeout/verify...
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        self.requests.append(request)
        response = requests.Response()
        response.status_code = self.status
        response._content = json.dumps(self.body).encode()
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def rest_with(status: int, body: Any) -> tuple[RestClient, RecordingAdapter]:
    session = requests.Session()
    adapter = RecordingAdapter(status, body)
    session.mount("http://", adapter)
    return RestClient("http://127.0.0.1:18501/", session=session), adapter


def test_rest_predict_sends_json_with_signature_to_label_url() -> None:
    """predict POSTs the body (plus signature_name) to the label's :predict URL."""
    client, adapter = rest_with(200, {"predictions": [2.5]})
    answer = client.predict(ModelRef("m", label="stable"), {"instances": [1.0]}, signature="sig")
    assert answer == {"predictions": [2.5]}
    sent = adapter.requests[0]
    assert sent.method == "POST"
    assert sent.url == "http://127.0.0.1:18501/v1/models/m/labels/stable:predict"
    assert json.loads(sent.body or b"{}") == {"instances": [1.0], "signature_name": "sig"}


def test_rest_client_ignores_proxy_environment() -> None:
    """Traffic stays on 127.0.0.1: proxies from the environment are never used."""
    client, _ = rest_with(200, {})
    assert client.session.trust_env is False


def test_rest_error_carries_status_and_server_message() -> None:
    """An HTTP error becomes ServingRequestError with the status and TF Serving's error text."""
    client, _ = rest_with(404, {"error": "Could not find any versions of model m"})
    with pytest.raises(ServingRequestError, match="Could not find any versions") as caught:
        client.model_status(ModelRef("m"))
    assert caught.value.status == 404


def test_json_to_tensor_shapes_and_flattens() -> None:
    """Nested lists give the shape and the row-major values, converted to the dtype."""
    tensor = json_to_tensor([[1, 2, 3], [4, 5, 6]], "DT_FLOAT")
    assert tensor.shape == (2, 3)
    assert tensor.values == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert json_to_tensor(7, "DT_INT64").shape == ()


def test_json_to_tensor_rejects_ragged_lists() -> None:
    """Ragged lists are refused with the index of the odd element."""
    with pytest.raises(UsageError, match=r"element 1 has shape \[1\]"):
        json_to_tensor([[1, 2], [3]], "DT_FLOAT")


def test_json_to_tensor_strings_and_b64() -> None:
    """DT_STRING takes text (UTF-8) and {"b64": ...} objects (decoded bytes)."""
    jpeg = b"\xff\xd8\xff\xe0binary"
    tensor = json_to_tensor(["abc", {"b64": base64.b64encode(jpeg).decode()}], "DT_STRING")
    assert tensor.values == (b"abc", jpeg)


def test_json_to_tensor_rejects_wrong_types() -> None:
    """A string for a number input, or 1.5 for an integer input, is a clear usage error."""
    with pytest.raises(UsageError, match="expected a number"):
        json_to_tensor(["x"], "DT_FLOAT")
    with pytest.raises(UsageError, match="not an integer"):
        json_to_tensor([1.5], "DT_INT64")


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("DT_FLOAT", [[0.5, 1.5], [2.5, -3.0]]),
        ("DT_DOUBLE", [0.1, 0.2]),
        ("DT_INT32", [1, -2, 3]),
        ("DT_INT64", [[2**40]]),
        ("DT_BOOL", [True, False]),
        ("DT_STRING", ["a", "b"]),
        ("DT_HALF", [0.5, 2.0]),
        ("DT_UINT8", [0, 255]),
    ],
)
def test_tensor_proto_round_trip(dtype: str, value: Any) -> None:
    """JSON -> TensorProto -> JSON keeps dtype, shape and values for every supported dtype."""
    tensor = json_to_tensor(value, dtype)
    back = from_tensor_proto(to_tensor_proto(tensor))
    assert back.dtype == dtype
    assert back.shape == tensor.shape
    assert back.values == tensor.values


def test_from_tensor_proto_reads_tensor_content_and_broadcasts() -> None:
    """Servers answer with tensor_content (raw little-endian) or one value for a whole tensor."""
    from tensorflow.core.framework import tensor_pb2  # noqa: PLC0415  # TF Serving protos: TensorFlow modules

    proto = tensor_pb2.TensorProto(dtype=1, tensor_content=struct.pack("<3f", 2.5, 3.0, 4.5))
    proto.tensor_shape.dim.add(size=3)
    assert from_tensor_proto(proto).values == (2.5, 3.0, 4.5)
    filled = tensor_pb2.TensorProto(dtype=9, int64_val=[7])
    filled.tensor_shape.dim.add(size=2)
    filled.tensor_shape.dim.add(size=2)
    assert from_tensor_proto(filled).to_nested() == [[7, 7], [7, 7]]


def test_float32_answers_print_like_rest() -> None:
    """float32 values come back as the short decimal REST prints (0.1, not 0.10000000149)."""
    from tensorflow.core.framework import tensor_pb2  # noqa: PLC0415  # TF Serving protos: TensorFlow modules

    proto = tensor_pb2.TensorProto(dtype=1, float_val=[0.1, 2.5])
    proto.tensor_shape.dim.add(size=2)
    assert from_tensor_proto(proto).values == (0.1, 2.5)


def test_signature_inputs_and_unknown_signature() -> None:
    """Input dtypes come from the metadata; an unknown signature lists the known ones."""
    assert signature_inputs(METADATA, None).dtypes == {"x": "DT_FLOAT"}
    with pytest.raises(UsageError) as caught:
        signature_inputs(METADATA, "nope")
    assert "serving_default" in str(caught.value) and "two_inputs" in str(caught.value)


def test_rest_body_to_grpc_row_and_columnar_formats() -> None:
    """instances (rows) and inputs (columns) map to one tensor per signature input."""
    single = SignatureInputs("serving_default", {"x": "DT_FLOAT"})
    rows = rest_body_to_grpc({"instances": [1.0, 2.0, 5.0]}, single)
    assert rows.row_format and rows.tensors["x"].shape == (3,)
    columns = rest_body_to_grpc({"inputs": {"x": [[1.0], [2.0]]}}, single)
    assert not columns.row_format and columns.tensors["x"].shape == (2, 1)
    named = SignatureInputs("two_inputs", {"a": "DT_INT64", "b": "DT_STRING"})
    request = rest_body_to_grpc({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}, named)
    assert request.tensors["a"].values == (1, 2)
    assert request.tensors["b"].values == (b"x", b"y")


def test_rest_body_to_grpc_errors() -> None:
    """Bodies without exactly one of instances/inputs, or naming unknown inputs, are refused."""
    single = SignatureInputs("serving_default", {"x": "DT_FLOAT"})
    with pytest.raises(UsageError, match="exactly one"):
        rest_body_to_grpc({"instances": [1], "inputs": [1]}, single)
    with pytest.raises(UsageError, match="no input 'z'"):
        rest_body_to_grpc({"inputs": {"z": [1.0]}}, single)
    two = SignatureInputs("two_inputs", {"a": "DT_INT64", "b": "DT_STRING"})
    with pytest.raises(UsageError, match="name them"):
        rest_body_to_grpc({"instances": [1, 2]}, two)


def test_grpc_outputs_to_rest_shapes_like_the_rest_api() -> None:
    """One output drops its name; several outputs become per-row objects (rows) or a map."""
    y = Tensor("DT_FLOAT", (2,), (2.5, 3.0))
    assert grpc_outputs_to_rest({"y": y}, row_format=True) == {"predictions": [2.5, 3.0]}
    assert grpc_outputs_to_rest({"y": y}, row_format=False) == {"outputs": [2.5, 3.0]}
    classes = Tensor("DT_INT64", (2,), (7, 9))
    both = grpc_outputs_to_rest({"y": y, "classes": classes}, row_format=True)
    assert both == {"predictions": [{"classes": 7, "y": 2.5}, {"classes": 9, "y": 3.0}]}
    raw = Tensor("DT_STRING", (1,), (b"\xff\x00",))
    assert grpc_outputs_to_rest({"image_bytes": raw}, row_format=False) == {
        "outputs": [{"b64": base64.b64encode(b"\xff\x00").decode()}]
    }


def test_matches_expected_uses_absolute_tolerance() -> None:
    """`expect` compares structure exactly and numbers within the absolute tolerance."""
    assert matches_expected({"predictions": [2.50004, 3.0]}, {"predictions": [2.5, 3]}, 1e-4)
    assert not matches_expected({"predictions": [2.6, 3.0]}, {"predictions": [2.5, 3.0]}, 1e-4)
    assert not matches_expected({"predictions": [2.5]}, {"predictions": [2.5, 3.0]}, 1e-4)
    assert not matches_expected({"outputs": [2.5]}, {"predictions": [2.5]}, 1e-4)
    assert not matches_expected(True, 1, 0.1)


def test_format_signatures_like_saved_model_cli() -> None:
    """inspect prints signatures, inputs and outputs with dtypes and shapes."""
    text = format_signatures(METADATA)
    assert "signature_def['serving_default']:" in text
    assert "    inputs['x'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1)" in text
    assert "name: serving_default_x:0" in text
    assert (
        "    inputs['b'] tensor_info:\n        dtype: DT_STRING\n        shape: unknown_rank"
        in text
    )
    assert "Method name is: tensorflow/serving/predict" in text
