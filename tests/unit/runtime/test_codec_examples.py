"""Unit tests of modelserver.codec's classify/regress and gRPC helpers, checked with TF protos."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import input_pb2

from modelserver import codec, inference
from modelserver.codec import Code, ServingError, TensorSpec


def parse_examples(body: dict[str, object]) -> list[tf.train.Example]:
    request = codec.parse_examples_request(json.dumps(body).encode())
    return [tf.train.Example.FromString(data) for data in request.examples]


def feature(example: tf.train.Example, name: str) -> tuple[str, list[object]]:
    f = example.features.feature[name]
    kind = f.WhichOneof("kind")
    return kind, list(getattr(f, kind).value) if kind else []


def test_examples_map_json_types_to_feature_lists() -> None:
    """int -> int64_list, float -> float_list, str -> bytes_list, b64 -> raw bytes, bool -> 0/1."""
    (example,) = parse_examples(
        {
            "examples": [
                {
                    "i": 3,
                    "f": 2.0,
                    "s": "héllo",
                    "b": {"b64": base64.b64encode(b"\x00\xff").decode()},
                    "many": [1, -2, 2**62],
                    "flag": True,
                    "empty": [],
                }
            ]
        }
    )
    assert feature(example, "i") == ("int64_list", [3])
    assert feature(example, "f") == ("float_list", [2.0])
    assert feature(example, "s") == ("bytes_list", ["héllo".encode()])
    assert feature(example, "b") == ("bytes_list", [b"\x00\xff"])
    assert feature(example, "many") == ("int64_list", [1, -2, 2**62])
    assert feature(example, "flag") == ("int64_list", [1])
    assert feature(example, "empty") == (None, [])


def test_context_features_are_merged_into_every_example() -> None:
    """`context` applies to each example; a feature in the example wins over the context."""
    examples = parse_examples(
        {"context": {"c": 1.5, "x": 9.0}, "examples": [{"x": 1.0}, {"x": 2.0, "y": "b"}]}
    )
    assert [feature(e, "x") for e in examples] == [("float_list", [1.0]), ("float_list", [2.0])]
    assert [feature(e, "c") for e in examples] == [("float_list", [1.5])] * 2
    assert feature(examples[1], "y") == ("bytes_list", [b"b"])


def test_signature_name_is_read_from_examples_requests() -> None:
    """The classify/regress body carries its signature like predict."""
    body = b'{"signature_name": "regress_x_to_y2", "examples": [{"x": 1.0}]}'
    assert codec.parse_examples_request(body).signature_name == "regress_x_to_y2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"examples": [{"x": [1, 2.0]}]}, "Unexpected element type in feature: x"),
        ({"examples": [{"x": None}]}, "unexpected JSON type: Null"),
        ({"examples": [{"x": [[1]]}]}, "unexpected JSON type: Array"),
        ({"examples": [{"x": {"k": 1}}]}, "unexpected JSON type: Object"),
        ({"examples": [{"x": 2**64 - 1}]}, "uint64 element"),
        ({"examples": [{"x": {"b64": "!!"}}]}, "Unable to base64 decode"),
        ({"examples": [[1]]}, "Example must be JSON object but got JSON Array"),
        ({"examples": []}, "'examples' value is an empty array"),
        ({"examples": {"x": 1}}, "Expecting 'examples' value to be an list/array"),
        ({"instances": [1]}, "key 'examples' is expected and was not found"),
    ],
)
def test_malformed_examples_are_invalid_argument(body: dict[str, object], message: str) -> None:
    """Each malformed classify/regress body is refused with upstream's message."""
    with pytest.raises(ServingError, match=message) as info:
        codec.parse_examples_request(json.dumps(body).encode())
    assert info.value.code is Code.INVALID_ARGUMENT


def test_scores_only_classification_gives_empty_labels() -> None:
    """half_plus_two's classify signature has only scores: labels are "" (upstream)."""
    result = codec.classification_results({"scores": np.array([[2.5], [3.0]], np.float32)}, 2)
    body = json.loads(codec.encode_classify_response(result))
    assert body == {"results": [[["", 2.5]], [["", 3.0]]]}


def test_classes_and_scores_pair_up_per_example() -> None:
    """classes and scores [batch, k] give k [label, score] pairs per example."""
    outputs = {
        "classes": np.array([[b"cat", b"dog"]], dtype=object),
        "scores": np.array([[0.25, 0.75]], np.float32),
    }
    body = json.loads(codec.encode_classify_response(codec.classification_results(outputs, 1)))
    assert body == {"results": [[["cat", 0.25], ["dog", 0.75]]]}


def test_classification_outputs_are_validated() -> None:
    """Wrong rank, batch size or dtype of classify outputs is refused like upstream."""
    with pytest.raises(ServingError, match=r"\[batch_size num_classes\]"):
        codec.classification_results({"scores": np.zeros(2, np.float32)}, 2)
    with pytest.raises(ServingError, match="output batch size of 3"):
        codec.classification_results({"scores": np.zeros((2, 1), np.float32)}, 3)
    with pytest.raises(ServingError, match="Expected scores Tensor of DT_FLOAT"):
        codec.classification_results({"scores": np.zeros((2, 1), np.int32)}, 2)


def test_regression_accepts_batch_or_batch_by_one_outputs() -> None:
    """regress outputs [n] or [n, 1] become {"results": [v, ...]}; other shapes are refused."""
    values = codec.regression_results({"outputs": np.array([[2.5], [3.0]], np.float32)}, 2)
    assert json.loads(codec.encode_regress_response(values)) == {"results": [2.5, 3.0]}
    with pytest.raises(ServingError, match="either \\[batch_size\\] or \\[batch_size, 1\\]"):
        codec.regression_results({"outputs": np.zeros((2, 2), np.float32)}, 2)
    with pytest.raises(ServingError, match="did not match output batch size"):
        codec.regression_results({"outputs": np.zeros(3, np.float32)}, 2)


def test_examples_fed_to_a_real_parse_example_give_the_features() -> None:
    """The serialized strings parse with tf.io.parse_example, as the classify signature does."""
    request = codec.parse_examples_request(b'{"examples": [{"x": 2.0}, {"x": 5.0}]}')
    parsed = tf.io.parse_example(request.examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})
    assert parsed["x"].numpy().tolist() == [[2.0], [5.0]]


# ----------------------------------------------------------------------------- gRPC helpers


def test_tensor_proto_round_trip_for_numbers_and_strings() -> None:
    """make_tensor_proto requests decode to the same arrays, strings as bytes objects."""
    floats = np.array([[1.0, 2.0]], np.float32)
    assert np.array_equal(inference.tensor_to_ndarray(tf.make_tensor_proto(floats)), floats)
    strings = inference.tensor_to_ndarray(tf.make_tensor_proto([b"a", b"bc"]))
    assert strings.tolist() == [b"a", b"bc"]
    back = inference.ndarray_to_tensor(np.array([3], np.int64))
    assert back.dtype == tf.int64.as_datatype_enum and list(back.int64_val) == [3]


def test_huge_declared_shape_is_refused_before_allocation() -> None:
    """A TensorProto declaring 10^12 values (one float_val) is refused, not allocated."""
    proto = tf.make_tensor_proto(1.0, dtype=tf.float32)
    proto.tensor_shape.Clear()
    for size in (10_000_000, 10_000_000):
        proto.tensor_shape.dim.add(size=size)
    with pytest.raises(ServingError, match=r"more than \d+ elements") as info:
        inference.tensor_to_ndarray(proto)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_inconsistent_tensor_content_is_refused() -> None:
    """tensor_content whose length does not match the shape is INVALID_ARGUMENT."""
    proto = tf.make_tensor_proto(np.zeros(4, np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(ServingError, match="tensor_content holds 12 bytes"):
        inference.tensor_to_ndarray(proto)
    proto = tf.make_tensor_proto(np.zeros(2, np.float32))
    proto.tensor_shape.dim[0].size = -5
    with pytest.raises(ServingError, match="negative dimension"):
        inference.tensor_to_ndarray(proto)


def test_input_proto_examples_merge_context_like_rest() -> None:
    """gRPC Input with context yields the same strings as the REST body with context."""
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    context = tf.train.Example()
    context.features.feature["c"].int64_list.value.append(7)
    proto = input_pb2.Input()
    proto.example_list_with_context.context.CopyFrom(context)
    proto.example_list_with_context.examples.append(example)
    (merged,) = codec.examples_from_input_proto(proto)
    parsed = tf.train.Example.FromString(merged)
    assert parsed.features.feature["c"].int64_list.value == [7]
    assert parsed.features.feature["x"].float_list.value == [2.0]
    with pytest.raises(ServingError, match=r"Input is empty\."):
        codec.examples_from_input_proto(input_pb2.Input())


def test_tensor_specs_build_from_signature_protos_and_tf_specs() -> None:
    """TensorSpec reads TensorInfo protos (incl. unknown rank) and tf.TensorSpec."""
    proto = meta_graph_pb2.TensorInfo(dtype=tf.string.as_datatype_enum)
    proto.tensor_shape.dim.add(size=-1)
    assert TensorSpec.from_tensor_info(proto) == TensorSpec("DT_STRING", (-1,))
    proto.tensor_shape.unknown_rank = True
    assert TensorSpec.from_tensor_info(proto).shape is None
    assert TensorSpec.from_tf(tf.TensorSpec([None, 1001], tf.float32)) == TensorSpec(
        "DT_FLOAT", (-1, 1001)
    )
    assert TensorSpec.from_tf(tf.TensorSpec(None, tf.int64)) == TensorSpec("DT_INT64", None)
