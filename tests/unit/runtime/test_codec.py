"""Unit tests of modelserver.codec: TF Serving REST JSON <-> numpy, per the contract section 5."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelserver import codec
from modelserver.codec import Code, Limits, RequestFormat, ServingError, TensorSpec

X_FLOAT = {"x": TensorSpec("DT_FLOAT", (-1,))}
IMAGES = {"image_bytes": TensorSpec("DT_STRING", (-1,))}


def decode(body: Any, specs: dict[str, TensorSpec], limits: Limits = codec.DEFAULT_LIMITS):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = codec.parse_predict_request(raw, limits)
    return codec.decode_predict_inputs(request, specs, limits)


def refused(body: Any, specs: dict[str, TensorSpec], limits: Limits = codec.DEFAULT_LIMITS):
    with pytest.raises(ServingError) as info:
        decode(body, specs, limits)
    return info.value


# ----------------------------------------------------------------------------- predict requests


def test_row_format_list_of_values_becomes_one_batched_float32_tensor() -> None:
    """`instances: [1.0, 2.0, 5.0]` feeds x as float32 [3] and asks for a row response."""
    decoded = decode({"instances": [1.0, 2.0, 5.0]}, X_FLOAT)
    assert decoded.format is RequestFormat.ROW
    x = decoded.tensors["x"]
    assert x.dtype == np.float32
    assert x.tolist() == [1.0, 2.0, 5.0]


def test_json_integers_are_accepted_for_float_inputs() -> None:
    """A JSON integer where a float is expected converts (upstream accepts lossless numbers)."""
    assert decode({"instances": [1, 2]}, X_FLOAT).tensors["x"].tolist() == [1.0, 2.0]


def test_signature_name_is_read_and_defaults_to_empty() -> None:
    """signature_name is passed through; its absence gives "" so the caller picks the default."""
    assert codec.parse_predict_request(b'{"instances": [1]}').signature_name == ""
    body = b'{"signature_name": "regress_x_to_y", "instances": [1]}'
    assert codec.parse_predict_request(body).signature_name == "regress_x_to_y"
    with pytest.raises(ServingError, match="'signature_name' key must be a string value"):
        codec.parse_predict_request(b'{"signature_name": 3, "instances": [1]}')


def test_row_format_named_objects_build_one_tensor_per_input() -> None:
    """A list of {input: value} objects sharing dim 0 gives one batched tensor per input."""
    specs = {"a": TensorSpec("DT_INT64", (-1, 2)), "b": TensorSpec("DT_STRING", (-1,))}
    decoded = decode({"instances": [{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": "y"}]}, specs)
    assert decoded.tensors["a"].dtype == np.int64
    assert decoded.tensors["a"].tolist() == [[1, 2], [3, 4]]
    assert decoded.tensors["b"].tolist() == [b"x", b"y"]


def test_row_format_objects_must_name_every_input_and_nothing_else() -> None:
    """Objects with a missing or unknown key are refused with the element index."""
    specs = {"a": TensorSpec("DT_FLOAT", (-1,)), "b": TensorSpec("DT_FLOAT", (-1,))}
    error = refused({"instances": [{"a": 1.0, "b": 2.0}, {"a": 1.0}]}, specs)
    assert error.code is Code.INVALID_ARGUMENT
    assert "Failed to process element: 1" in error.message and "a,b" in error.message
    error = refused({"instances": [{"a": 1.0, "b": 2.0, "c": 3.0}]}, specs)
    assert "does not have named input: c" in error.message


def test_plain_list_is_refused_when_the_signature_has_several_inputs() -> None:
    """With several inputs, row format needs objects (upstream's message)."""
    specs = {"a": TensorSpec("DT_FLOAT", (-1,)), "b": TensorSpec("DT_FLOAT", (-1,))}
    assert "instances is a plain list" in refused({"instances": [1.0]}, specs).message


def test_columnar_format_accepts_a_scalar_a_list_or_an_object() -> None:
    """`inputs` may be a bare value, a list or {input: tensor}; the response is columnar."""
    scalar = decode({"inputs": 2.0}, {"x": TensorSpec("DT_FLOAT", ())})
    assert scalar.format is RequestFormat.COLUMNAR
    assert scalar.tensors["x"].shape == () and float(scalar.tensors["x"]) == 2.0
    assert decode({"inputs": [1.0, 2.0]}, X_FLOAT).tensors["x"].tolist() == [1.0, 2.0]
    specs = {"a": TensorSpec("DT_INT32", None), "b": TensorSpec("DT_BOOL", None)}
    both = decode({"inputs": {"a": [[1, 2]], "b": [True, False]}}, specs).tensors
    assert both["a"].dtype == np.int32 and both["a"].shape == (1, 2)
    assert both["b"].tolist() == [True, False]
    assert "Missing named input: b" in refused({"inputs": {"a": [1]}}, specs).message


def test_exactly_one_of_instances_and_inputs_is_required() -> None:
    """Both keys, neither key, or an empty/non-list `instances` are refused like upstream."""
    assert (
        "only one of 'inputs' or 'instances'"
        in refused({"instances": [1.0], "inputs": [1.0]}, X_FLOAT).message
    )
    assert refused({"signature_name": "s"}, X_FLOAT).message == (
        "Missing 'inputs' or 'instances' key"
    )
    assert "No values in 'instances' array" in refused({"instances": []}, X_FLOAT).message
    assert "to be an list/array" in refused({"instances": 1.0}, X_FLOAT).message


def test_a_string_where_a_float_is_expected_is_invalid_argument() -> None:
    """Wrong JSON types give INVALID_ARGUMENT naming the value, the dtype and where it was."""
    error = refused({"instances": [1.0, "2.0"]}, X_FLOAT)
    assert error.code is Code.INVALID_ARGUMENT and error.http_status == 400
    assert '"2.0" Type: String is not of expected type: DT_FLOAT' in error.message
    assert "instances[1]" in error.message
    for bad in (None, True, {"b64": "AAAA"}, {"k": 1}):
        error = refused({"instances": [1.0, bad]}, X_FLOAT)
        assert "is not of expected type: DT_FLOAT" in error.message


def test_integer_inputs_refuse_fractions_and_out_of_range_values() -> None:
    """DT_INT32 takes JSON integers only, within range; DT_BOOL takes only true/false."""
    ints = {"n": TensorSpec("DT_INT32", (-1,))}
    assert decode({"instances": [1, -2]}, ints).tensors["n"].tolist() == [1, -2]
    assert "is not of expected type: DT_INT32" in refused({"instances": [1.5]}, ints).message
    assert "is not of expected type: DT_INT32" in refused({"instances": [2**40]}, ints).message
    bools = {"b": TensorSpec("DT_BOOL", (-1,))}
    assert "is not of expected type: DT_BOOL" in refused({"instances": [1]}, bools).message


def test_int64_inputs_keep_full_precision() -> None:
    """Large JSON integers reach DT_INT64 inputs exactly."""
    specs = {"n": TensorSpec("DT_INT64", (-1,))}
    big = 2**62 + 1
    assert decode({"instances": [big, -big]}, specs).tensors["n"].tolist() == [big, -big]
    assert "DT_INT64" in refused({"instances": [2**63]}, specs).message


def test_ragged_lists_are_refused() -> None:
    """Lists of unequal length inside one tensor are INVALID_ARGUMENT, never a crash."""
    specs = {"x": TensorSpec("DT_FLOAT", None)}
    assert "unexpected size" in refused({"instances": [[1.0], [2.0, 3.0]]}, specs).message
    assert "incorrect level" in refused({"instances": [[1.0], 2.0]}, specs).message
    assert "unexpected level" in refused({"instances": [1.0, [2.0]]}, specs).message
    strings = {"s": TensorSpec("DT_STRING", None)}
    assert "unexpected size" in refused({"inputs": [["a"], ["b", "c"]]}, strings).message


def test_nan_and_infinity_literals_are_accepted_in_requests() -> None:
    """Upstream parses NaN / Infinity / -Infinity in requests."""
    x = decode(b'{"instances": [NaN, Infinity, -Infinity, 1.5]}', X_FLOAT).tensors["x"]
    assert math.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf and x[3] == 1.5


def test_numbers_that_do_not_fit_a_float32_are_refused() -> None:
    """Upstream refuses lossy conversions to float (too large, or integers beyond 2**24)."""
    assert "without loss of precision" in refused({"instances": [1e39]}, X_FLOAT).message
    assert "without loss of precision" in refused({"instances": [2**24 + 1]}, X_FLOAT).message
    doubles = {"d": TensorSpec("DT_DOUBLE", (-1,))}
    assert decode({"instances": [1e39]}, doubles).tensors["d"].tolist() == [1e39]


def test_b64_objects_feed_string_inputs_and_plain_strings_are_utf8() -> None:
    """{"b64": ...} decodes to raw bytes; a plain JSON string feeds its UTF-8 bytes."""
    jpeg = bytes(range(256))
    encoded = base64.b64encode(jpeg).decode()
    images = decode({"instances": [{"b64": encoded}, "héllo"]}, IMAGES).tensors["image_bytes"]
    assert images.dtype == object
    assert images.tolist() == [jpeg, "héllo".encode()]
    unpadded = decode({"instances": [{"b64": "aGk"}]}, IMAGES).tensors["image_bytes"]
    assert unpadded.tolist() == [b"hi"]


def test_malformed_base64_is_invalid_argument() -> None:
    """Bad base64 text or a malformed b64 object is refused with upstream's wording."""
    for bad in ("not base64!", "a", "aGk=x"):
        error = refused({"instances": [{"b64": bad}]}, IMAGES)
        assert error.code is Code.INVALID_ARGUMENT
        assert "Unable to base64 decode" in error.message
    assert (
        "not formatted correctly for base64"
        in refused({"inputs": [{"b64": "aGk=", "extra": 1}]}, IMAGES).message
    )
    assert "not formatted correctly for base64" in refused({"inputs": [{"b64": 3}]}, IMAGES).message


def test_inputs_are_not_checked_against_the_signature_shape() -> None:
    """Like upstream, the JSON alone shapes the tensor; the TensorFlow run decides the rest."""
    specs = {"img": TensorSpec("DT_FLOAT", (-1, 2))}
    assert decode({"instances": [[1.0, 2.0]]}, specs).tensors["img"].shape == (1, 2)
    assert decode({"instances": [[1.0, 2.0, 3.0]]}, specs).tensors["img"].shape == (1, 3)
    assert decode({"inputs": [1.0, 2.0]}, specs).tensors["img"].shape == (2,)


def test_a_signature_without_inputs_is_refused() -> None:
    """An empty input map gives upstream's `Failed to get input map` message."""
    request = codec.parse_predict_request(b'{"instances": [1]}')
    with pytest.raises(ServingError, match="Failed to get input map for signature: DEFAULT"):
        codec.decode_predict_inputs(request, {})


def test_unsupported_input_dtypes_are_unimplemented() -> None:
    """JSON cannot feed e.g. DT_HALF inputs; upstream answers UNIMPLEMENTED."""
    error = refused({"instances": [1.0]}, {"h": TensorSpec("DT_HALF", (-1,))})
    assert error.code is Code.UNIMPLEMENTED and error.http_status == 501


# ----------------------------------------------------------------------------- hostile input


def test_malformed_json_and_non_objects_are_parse_errors() -> None:
    """Bad JSON gives `JSON Parse error: ...`; a non-object document is refused."""
    for body in (b"", b"   ", b"{", b'{"instances": [1,]}', b"\xff\xfe"):
        with pytest.raises(ServingError, match="JSON Parse error") as info:
            codec.parse_predict_request(body)
        assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ServingError, match="Is not object"):
        codec.parse_predict_request(b"[1, 2]")


def test_body_over_the_limit_is_refused_before_parsing() -> None:
    """A body longer than max_body_bytes is refused with the limit in the message."""
    limits = Limits(max_body_bytes=100)
    body = b'{"instances": [' + b"1.0," * 50 + b"1.0]}"
    with pytest.raises(ServingError, match="more than the limit of 100 bytes"):
        codec.parse_predict_request(body, limits)


@pytest.mark.parametrize("nan", [False, True])
def test_deep_nesting_is_refused_without_recursion_errors(nan: bool) -> None:
    """100k nested lists (with or without NaN, i.e. both parsers) give a 400, not a crash."""
    depth = 100_000
    inner = b"NaN" if nan else b"1"
    body = b'{"instances": ' + b"[" * depth + inner + b"]" * depth + b"}"
    with pytest.raises(ServingError) as info:
        decode(body, X_FLOAT)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_tensors_nested_deeper_than_max_depth_are_refused() -> None:
    """Nesting within the JSON parser's limit but above max_depth is refused by the codec."""
    body = {"instances": [[[[[[1.0]]]]]]}
    error = refused(body, {"x": TensorSpec("DT_FLOAT", None)}, Limits(max_depth=4))
    assert "nested deeper than 4 levels" in error.message


def test_too_many_values_are_refused_before_allocating_an_array() -> None:
    """A tensor implying more than max_elements values is refused with the count."""
    body = {"instances": [[0.0] * 100] * 100}
    error = refused(body, {"x": TensorSpec("DT_FLOAT", None)}, Limits(max_elements=5000))
    assert "10000 values, more than the limit of 5000" in error.message


# ----------------------------------------------------------------------------- predict responses


def dumps_back(data: bytes) -> Any:
    return json.loads(data)


def test_row_response_with_one_output_drops_its_name() -> None:
    """One output: {"predictions": [..]} (the famous half_plus_two answer)."""
    y = np.array([2.5, 3.0, 4.5], dtype=np.float32)
    body = codec.encode_predict_response({"y": y}, RequestFormat.ROW)
    assert body == b'{"predictions":[2.5,3.0,4.5]}'


def test_row_response_with_several_outputs_is_a_list_of_objects() -> None:
    """Several outputs: one object per batch row, keyed by output name."""
    outputs = {
        "classes": np.array([3, 7], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
    }
    parsed = dumps_back(codec.encode_predict_response(outputs, RequestFormat.ROW))
    assert parsed == {
        "predictions": [
            {"classes": 3, "probabilities": [0.25, 0.75]},
            {"classes": 7, "probabilities": [0.5, 0.5]},
        ]
    }


def test_row_response_refuses_outputs_with_different_batch_sizes() -> None:
    """Outputs disagreeing on dim 0 (or scalars) cannot be written as rows."""
    outputs = {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        codec.encode_predict_response(outputs, RequestFormat.ROW)
    with pytest.raises(ServingError, match="has no shape information"):
        codec.encode_predict_response({"a": np.float32(1.0) * np.ones(())}, RequestFormat.ROW)


def test_columnar_response_names_outputs_only_when_there_are_several() -> None:
    """{"outputs": value} for one output, {"outputs": {name: value}} for several."""
    one = codec.encode_predict_response({"y": np.array([1.5], np.float32)}, RequestFormat.COLUMNAR)
    assert one == b'{"outputs":[1.5]}'
    outputs = {"a": np.array(2, np.int64), "b": np.array([[True]])}
    assert dumps_back(codec.encode_predict_response(outputs, RequestFormat.COLUMNAR)) == {
        "outputs": {"a": 2, "b": [[True]]}
    }


def test_string_outputs_are_utf8_and_bytes_outputs_are_b64() -> None:
    """DT_STRING outputs are JSON strings, unless the output name ends in `_bytes`."""
    strings = np.array([b"caf\xc3\xa9", b"\xff\x00"], dtype=object)
    body = codec.encode_predict_response(
        {"label": strings, "raw_bytes": strings.copy()}, RequestFormat.COLUMNAR
    )
    parsed = dumps_back(body)
    assert parsed["outputs"]["label"][0] == "café"
    assert parsed["outputs"]["raw_bytes"] == [
        {"b64": base64.b64encode(b"caf\xc3\xa9").decode()},
        {"b64": base64.b64encode(b"\xff\x00").decode()},
    ]


def test_float32_outputs_use_the_shortest_text_that_round_trips() -> None:
    """0.1f is written as 0.1 (not 0.10000000149...), and every value round-trips exactly."""
    values = np.array([0.1, 1 / 3, 1e-7, 3e38, 16777216.0], dtype=np.float32)
    body = codec.encode_predict_response({"v": values}, RequestFormat.COLUMNAR)
    assert body.startswith(b'{"outputs":[0.1,0.33333334,')
    assert np.array_equal(np.array(dumps_back(body)["outputs"], dtype=np.float32), values)


def test_nan_and_infinity_outputs_are_written_as_literals() -> None:
    """Upstream emits NaN / Infinity / -Infinity in responses; null would lose them."""
    values = np.array([np.nan, np.inf, -np.inf, 0.5], dtype=np.float32)
    body = codec.encode_predict_response({"v": values}, RequestFormat.ROW)
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,0.5]}'
    multi = codec.encode_predict_response(
        {"a": values, "b": np.array([1, 2, 3, 4])}, RequestFormat.ROW
    )
    assert b'"a":NaN' in multi and b'"a":-Infinity' in multi


def test_int64_outputs_are_json_numbers() -> None:
    """DT_INT64 outputs (e.g. resnet classes) are numbers, exact even beyond 2**53."""
    big = 2**60 + 1
    body = codec.encode_predict_response({"c": np.array([big], np.int64)}, RequestFormat.ROW)
    assert body == f'{{"predictions":[{big}]}}'.encode()


def test_empty_output_map_is_refused() -> None:
    """There is nothing to write for a signature without outputs."""
    with pytest.raises(ServingError, match="empty tensor map"):
        codec.encode_predict_response({}, RequestFormat.ROW)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=20)
)
def test_float32_values_survive_request_and_response_unchanged(values: list[float]) -> None:
    """Any finite float32 sent in a request and echoed in a response comes back bit-identical."""
    decoded = decode(orjson.dumps({"instances": values}), X_FLOAT)
    body = codec.encode_predict_response({"y": decoded.tensors["x"]}, decoded.format)
    echoed = np.array(json.loads(body)["predictions"], dtype=np.float32)
    assert np.array_equal(echoed, np.array(values, dtype=np.float32))


# ----------------------------------------------------------------------------- errors


def test_error_codes_map_to_the_contract_http_statuses() -> None:
    """TF codes map to the HTTP statuses of contract section 5; the body is {"error": ...}."""
    expected = {
        Code.INVALID_ARGUMENT: 400,
        Code.FAILED_PRECONDITION: 400,
        Code.NOT_FOUND: 404,
        Code.DEADLINE_EXCEEDED: 504,
        Code.UNAVAILABLE: 503,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.UNIMPLEMENTED: 501,
        Code.INTERNAL: 500,
        Code.UNKNOWN: 500,
    }
    for code, status in expected.items():
        assert ServingError(code, "m").http_status == status
    assert json.loads(codec.error_body('a "quoted" text')) == {"error": 'a "quoted" text'}
