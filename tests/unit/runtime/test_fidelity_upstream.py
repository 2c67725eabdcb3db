"""The four behaviours of issue #16 (and #10's dtype and element bounds), beyond upstream's suite.

Zero-padded version directories, no signature-shape check (the session decides), output
encoding (typed fields by default, ``tensor_content`` behind the flag), the Unix socket, input
dtypes refused rather than converted, bounded fills, and flags refused instead of ignored.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from modelserver.flags import parse_flags, refused_flags
from modelserver.main import main
from modelserver.manager import version_directories

from .test_upstream_suite import HALF_PLUS_THREE, HALF_PLUS_TWO, Starter, upstream_server

__all__ = ["upstream_server"]  # the fixture, imported for pytest


def predict(channel: grpc.Channel, tensor: object, **spec: object) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tensor)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response: predict_pb2.PredictResponse = stub.Predict(request, 20)
    return response


def float_tensor(values: list[float], shape: list[int]) -> object:
    from tensorflow.core.framework import tensor_pb2

    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


def refused(channel: grpc.Channel, tensor: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        predict(channel, tensor)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value


def test_version_directories_keep_the_real_name(tmp_path: Path) -> None:
    """``00000123`` is version 123 loaded from ``00000123``; a duplicate name loses, warned."""
    for name in ("00000123", "7", "0124", "124", "tmp-125"):
        (tmp_path / name).mkdir()
    assert version_directories(str(tmp_path)) == {7: "7", 123: "00000123", 124: "124"}


def test_zero_padded_versions_poll_load_and_unload(
    upstream_server: Starter, tmp_path: Path
) -> None:
    """A new 00000124 beside 00000123 is loaded from its own name and the old one unloaded."""
    base = tmp_path / "model"
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "00000123")
    server = upstream_server("default", base)
    assert list(predict(server.channel, float_tensor([2.0], [1])).outputs["y"].float_val) == [3.0]
    shutil.copytree(HALF_PLUS_THREE / "00000123", base / ".staging")
    (base / ".staging").rename(base / "00000124")
    deadline = time.monotonic() + 20
    while True:
        response = predict(server.channel, float_tensor([2.0], [1]))
        if response.model_spec.version.value == 124:
            break
        assert time.monotonic() < deadline, "version 124 (00000124) was never served"
        time.sleep(0.2)
    assert list(response.outputs["y"].float_val) == [4.0]
    while [r.version for r in server.server.manager.status("default") if r.state == 30] != [124]:
        assert time.monotonic() < deadline, "version 123 was not unloaded"
        time.sleep(0.2)
    pinned = predict(server.channel, float_tensor([2.0], [1]), signature_name="")
    assert pinned.model_spec.version.value == 124


def test_shapes_are_left_to_the_graph(upstream_server: Starter) -> None:
    """x declared [-1,1] takes [1], [3], [2,2] and a scalar: the output has the fed shape."""
    server = upstream_server("default", HALF_PLUS_TWO)
    for values, shape in (([2.0], [1]), ([2.0, 3.0, 4.0], [3]), ([1.0, 2.0, 3.0, 4.0], [2, 2])):
        output = predict(server.channel, float_tensor(values, shape)).outputs["y"]
        assert [d.size for d in output.tensor_shape.dim] == shape
        assert list(output.float_val) == [0.5 * v + 2 for v in values]
    scalar = predict(server.channel, float_tensor([2.0], [])).outputs["y"]
    assert (len(scalar.tensor_shape.dim), list(scalar.float_val)) == (0, [3.0])


def test_rest_shapes_are_left_to_the_graph(upstream_server: Starter) -> None:
    """REST instances [[1],[2]] and [1,2] both work on x [-1,1]; 2x2 instances too."""
    server = upstream_server("default", HALF_PLUS_TWO)
    path = "/v1/models/default:predict"
    assert server.post_json(path, {"instances": [[1.0], [2.0]]}) == (
        200,
        {"predictions": [[2.5], [3.0]]},
    )
    assert server.post_json(path, {"instances": [[1.0, 2.0], [3.0, 4.0]]}) == (
        200,
        {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
    )


def test_wrong_input_dtypes_are_refused_with_upstreams_text(upstream_server: Starter) -> None:
    """int32, numeral strings and doubles fed to a float input answer INVALID_ARGUMENT."""
    from tensorflow.core.framework import tensor_pb2

    server = upstream_server("default", HALF_PLUS_TWO)
    ints = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1, 2, 5])
    ints.tensor_shape.dim.add().size = 3
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"1", b"2"])
    strings.tensor_shape.dim.add().size = 2
    doubles = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[16777217.0, 1e300])
    doubles.tensor_shape.dim.add().size = 2
    for tensor, name in ((ints, "int32"), (strings, "string"), (doubles, "double")):
        error = refused(server.channel, tensor)
        assert error.details() == f"Expects arg[0] to be float but {name} is provided"


def test_a_few_bytes_cannot_declare_a_huge_filled_tensor(upstream_server: Starter) -> None:
    """One value for a 25M-element shape is refused at once, naming the bound."""
    server = upstream_server("default", HALF_PLUS_TWO)
    started = time.monotonic()
    error = refused(server.channel, float_tensor([1.0], [25_000_000]))
    assert time.monotonic() - started < 2
    assert "25000000 elements" in str(error.details())
    filled = predict(server.channel, float_tensor([1.0], [4])).outputs["y"]
    assert list(filled.float_val) == [2.5] * 4


def test_outputs_use_typed_fields_by_default(upstream_server: Starter) -> None:
    """Non-scalar outputs come back in float_val, tensor_content empty (AsProtoField)."""
    server = upstream_server("default", HALF_PLUS_TWO)
    output = predict(server.channel, float_tensor([1.0, 2.0, 5.0], [3])).outputs["y"]
    assert (list(output.float_val), output.tensor_content) == ([2.5, 3.0, 4.5], b"")


def test_tensor_content_only_with_the_flag(server_factory: object, tmp_path: Path) -> None:
    """--enable_serialization_as_tensor_content writes raw bytes and no float_val."""
    base = tmp_path / "model"
    shutil.copytree(HALF_PLUS_TWO, base)
    server = server_factory(  # type: ignore[operator]
        "--model_name=default",
        f"--model_base_path={base}",
        "--enable_serialization_as_tensor_content=true",
    )
    output = predict(server.channel, float_tensor([1.0, 2.0, 5.0], [3])).outputs["y"]
    assert list(output.float_val) == []
    assert np.frombuffer(output.tensor_content, np.float32).tolist() == [2.5, 3.0, 4.5]


def test_string_outputs_in_tensor_content_use_tensorflows_encoding() -> None:
    """Strings under the flag: varint lengths then bytes, as TensorFlow's EncodeStringList."""
    from modelserver.inference import ndarray_to_tensor

    array = np.array([b"ab", b"c" * 200], dtype=object)
    content = ndarray_to_tensor(array, as_content=True).tensor_content
    assert content == b"\x02\xc8\x01" + b"ab" + b"c" * 200
    assert list(ndarray_to_tensor(array).string_val) == [b"ab", b"c" * 200]


def test_grpc_is_served_on_the_unix_socket(server_factory: object, tmp_path: Path) -> None:
    """--grpc_socket_path creates a socket answering the same Predict as the TCP port."""
    socket_path = tmp_path / "serving.sock"
    server_factory(  # type: ignore[operator]
        "--model_name=default",
        f"--model_base_path={HALF_PLUS_TWO}",
        f"--grpc_socket_path={socket_path}",
    )
    assert socket_path.is_socket()
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        assert list(predict(channel, float_tensor([2.0], [1])).outputs["y"].float_val) == [3.0]


@pytest.mark.parametrize(
    "flag",
    [
        "--ssl_config_file=/etc/ssl.conf",
        "--prefer_tflite_model=true",
        "--rest_api_enable_cors_support",
        "--enable_grpc_healthcheck_service=true",
        "--tensorflow_session_config_file=/s.pbtxt",
    ],
)
def test_unimplemented_flags_are_refused_at_start(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag that would change behaviour but is not implemented stops the start, named."""
    assert main([flag, f"--model_base_path={HALF_PLUS_TWO}"]) == 255
    out = capsys.readouterr().out
    name = flag.lstrip("-").split("=")[0]
    assert f"Failed to start server. Error: INVALID_ARGUMENT: --{name}=" in out
    assert "is not supported by this server" in out


def test_defaults_refuse_nothing() -> None:
    """The default flags (and flags set to their defaults) start normally."""
    assert refused_flags(parse_flags([])) == []
    assert refused_flags(parse_flags(["--prefer_tflite_model=false", "--ssl_config_file="])) == []
