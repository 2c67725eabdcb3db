"""Protocol-buffer requests run against a servable: what gRPC and warmup share (Predict through
the data plane's one path, :func:`modelserver.dataplane.predict`).

TensorProtos are checked (shape, element count, content size) before anything is allocated, so a
hostile request declaring a huge shape gets INVALID_ARGUMENT instead of exhausting memory: a
tensor the request fills from fewer values than its shape holds (one value repeated, or none)
may have at most ``MAX_FILL_ELEMENTS`` elements, so a few bytes cannot make the server build
hundreds of megabytes. Input dtypes are never converted (the session refuses a mismatch, as
upstream's does).

Outputs are written like upstream's ``Tensor::AsProtoField`` (typed ``*_val`` fields) by default
and like ``Tensor::AsProtoTensorContent`` with ``--enable_serialization_as_tensor_content``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from modelserver import codec, dataplane
from modelserver.dataplane import fill_model_spec
from modelserver.errors import Code, ServingError, invalid_argument, shown
from modelserver.servable import DEFAULT_SIGNATURE, MAX_TENSOR_ELEMENTS, Servable

Predict = Callable[[Servable, str, Mapping[str, Any], Sequence[str]], dict[str, np.ndarray]]
"""How a Predict runs: :func:`modelserver.dataplane.predict` or a plane's batching choice."""

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# A tensor filled from fewer values than it holds may have at most this many elements.
MAX_FILL_ELEMENTS = 1 << 20

_VALUE_FIELDS = (
    "half_val",
    "float_val",
    "double_val",
    "int_val",
    "string_val",
    "scomplex_val",
    "int64_val",
    "bool_val",
    "dcomplex_val",
    "uint32_val",
    "uint64_val",
)


def tensor_to_ndarray(proto: Any) -> np.ndarray:
    """A TensorProto as a numpy array, refusing malformed or oversized declarations."""
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("Unable to parse tensor proto: the tensor shape has unknown rank")
    count = 1
    for dim in proto.tensor_shape.dim:
        if dim.size < 0:
            raise invalid_argument(
                f"Unable to parse tensor proto: negative dimension {dim.size} in the tensor shape"
            )
        count *= dim.size
        if count > MAX_TENSOR_ELEMENTS:
            raise invalid_argument(
                "Unable to parse tensor proto: the declared shape has more than "
                f"{MAX_TENSOR_ELEMENTS} elements"
            )
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError as exc:
        raise invalid_argument(
            f"Unable to parse tensor proto: unsupported dtype {proto.dtype}"
        ) from exc
    if dtype == tf.string:
        values = len(proto.string_val)
        item = 0
    else:
        item = dtype.size
        values = sum(len(getattr(proto, f)) for f in _VALUE_FIELDS if f != "string_val")
    if proto.tensor_content:
        if dtype == tf.string or len(proto.tensor_content) != count * item:
            raise invalid_argument(
                "Unable to parse tensor proto: tensor_content holds "
                f"{len(proto.tensor_content)} bytes, the shape needs {count * item}"
            )
    elif values < count and count > MAX_FILL_ELEMENTS:
        raise invalid_argument(
            f"Unable to parse tensor proto: {values} value(s) for a shape of {count} elements; "
            f"a tensor filled from fewer values than its shape holds may have at most "
            f"{MAX_FILL_ELEMENTS} elements (send every value, or use tensor_content)"
        )
    elif values not in (0, 1, count) and not (dtype.is_complex and values in (2, 2 * count)):
        raise invalid_argument(
            f"Unable to parse tensor proto: {values} values for a shape of {count} elements"
        )
    fast = _fast_ndarray(proto, count, values)
    if fast is not None:
        return fast
    try:
        array: np.ndarray = tf.make_ndarray(proto)
    except Exception as exc:
        raise invalid_argument(f"Unable to parse tensor proto: {exc}") from exc
    return array


# DataType -> (numpy dtype, repeated value field) for the fast conversions below; the values
# are what tf.make_ndarray / tf.make_tensor_proto produce for these types.
_FAST_TYPES: dict[int, tuple[np.dtype[Any], str]] = {
    1: (np.dtype(np.float32), "float_val"),
    2: (np.dtype(np.float64), "double_val"),
    3: (np.dtype(np.int32), "int_val"),
    9: (np.dtype(np.int64), "int64_val"),
}
_CONTENT_DTYPES: dict[np.dtype[Any], int] = {
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4,
    np.dtype(np.int16): 5,
    np.dtype(np.int8): 6,
    np.dtype(np.int64): 9,
    np.dtype(np.uint16): 17,
    np.dtype(np.uint32): 22,
    np.dtype(np.uint64): 23,
}
_DT_STRING = 7


def _fast_ndarray(proto: Any, count: int, values: int) -> np.ndarray | None:
    """tf.make_ndarray for the common cases (float/double/int32/int64 from tensor_content or
    one value per element; strings), without TensorFlow's Python overhead; None otherwise."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.dtype == _DT_STRING:
        if len(proto.string_val) != count:
            return None
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    known = _FAST_TYPES.get(proto.dtype)
    if known is None:
        return None
    dtype, field = known
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
    if values != count or len(getattr(proto, field)) != count:
        return None
    return np.array(getattr(proto, field), dtype=dtype).reshape(shape)


# numpy dtype -> (DataType, repeated field AsProtoField fills); int_val holds the narrow ints.
_FIELD_TYPES: dict[np.dtype[Any], tuple[int, str]] = {
    np.dtype(np.float32): (1, "float_val"),
    np.dtype(np.float64): (2, "double_val"),
    np.dtype(np.int32): (3, "int_val"),
    np.dtype(np.uint8): (4, "int_val"),
    np.dtype(np.int16): (5, "int_val"),
    np.dtype(np.int8): (6, "int_val"),
    np.dtype(np.int64): (9, "int64_val"),
    np.dtype(np.bool_): (10, "bool_val"),
    np.dtype(np.uint16): (17, "int_val"),
    np.dtype(np.uint32): (22, "uint32_val"),
    np.dtype(np.uint64): (23, "uint64_val"),
}


def ndarray_to_tensor(array: np.ndarray, *, as_content: bool = False) -> Any:
    """A TensorProto as upstream's PredictResponse writes it: every value in the typed field
    (``float_val``...; ``Tensor::AsProtoField``) by default, or the raw little-endian bytes in
    ``tensor_content`` (``Tensor::AsProtoTensorContent``) when ``as_content``."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    proto = tensor_pb2.TensorProto()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    if array.dtype.kind in "OSU":
        proto.dtype = _DT_STRING
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.flat]
        if as_content:
            proto.tensor_content = _encode_string_list(items)
        else:
            proto.string_val.extend(items)
        return proto
    if as_content and array.dtype in _CONTENT_DTYPES:
        proto.dtype = _CONTENT_DTYPES[array.dtype]
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
        return proto
    known = _FIELD_TYPES.get(array.dtype)
    if known is None:
        # Half, bfloat16, complex...: TensorFlow's own writer (tensor_content for arrays).
        converted: Any = tf.make_tensor_proto(array)
        return converted
    proto.dtype, field_name = known
    getattr(proto, field_name).extend(array.ravel().tolist())
    return proto


def _encode_string_list(items: list[bytes]) -> bytes:
    """TensorFlow's string ``tensor_content``: every length as a varint32, then the bytes."""
    lengths = bytearray()
    for item in items:
        size = len(item)
        while size >= 0x80:
            lengths.append((size & 0x7F) | 0x80)
            size >>= 7
        lengths.append(size)
    return bytes(lengths) + b"".join(items)


def fill_predict_outputs(
    response: Any, outputs: Mapping[str, np.ndarray], *, as_content: bool = False
) -> None:
    """Write a Predict's output tensors into ``response.outputs``."""
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(ndarray_to_tensor(value, as_content=as_content))


def run_predict(
    servable: Servable,
    request: Any,
    response: Any,
    predict: Predict = dataplane.predict,
    *,
    as_content: bool = False,
) -> None:
    """Fill a PredictResponse for a PredictRequest (outputs as ``ndarray_to_tensor`` writes);
    ``predict`` runs it (unbatched unless the caller passes its plane's choice)."""
    signature_name = request.model_spec.signature_name
    inputs = {alias: tensor_to_ndarray(t) for alias, t in request.inputs.items()}
    outputs = predict(servable, signature_name, inputs, list(request.output_filter))
    fill_predict_outputs(response, outputs, as_content=as_content)
    fill_model_spec(response.model_spec, servable, signature_name)


def serialized_examples(input_proto: Any) -> list[bytes]:
    """Serialized tf.Examples from an ``Input`` (context merged into every example)."""
    return codec.examples_from_input_proto(input_proto)


def run_classify(servable: Servable, request: Any, response: Any) -> None:
    signature_name = request.model_spec.signature_name
    found = servable.classify(signature_name, serialized_examples(request.input))
    fill_classification(response.result, found)
    fill_model_spec(response.model_spec, servable, signature_name)


def fill_classification(result: Any, found: codec.Classifications) -> None:
    for labels, scores in zip(found.labels, found.scores.tolist(), strict=True):
        classifications = result.classifications.add()
        for label, score in zip(labels, scores, strict=True):
            item = classifications.classes.add()
            item.label = label.decode("utf-8", errors="replace")
            item.score = score


def run_regress(servable: Servable, request: Any, response: Any) -> None:
    signature_name = request.model_spec.signature_name
    values = servable.regress(signature_name, serialized_examples(request.input))
    for value in values.tolist():
        response.result.regressions.add().value = value
    fill_model_spec(response.model_spec, servable, signature_name)


def run_multi_inference(servable: Servable, request: Any, response: Any) -> None:
    """Upstream's MultiInference: one model, distinct signatures, classify/regress tasks only."""
    if not request.tasks:
        raise invalid_argument("MultiInferenceRequest must contain at least one task.")
    examples = serialized_examples(request.input)
    model_name = request.tasks[0].model_spec.name
    seen: set[str] = set()
    for task in request.tasks:
        if task.model_spec.name != model_name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {shown(name)}")
        seen.add(name)
    for task in request.tasks:
        result = response.results.add()
        signature_name = task.model_spec.signature_name
        if task.method_name == CLASSIFY_METHOD:
            fill_classification(
                result.classification_result, servable.classify(signature_name, examples)
            )
        elif task.method_name == REGRESS_METHOD:
            for value in servable.regress(signature_name, examples).tolist():
                result.regression_result.regressions.add().value = value
        else:
            raise ServingError(
                Code.UNIMPLEMENTED, f"Unsupported signature method_name: {shown(task.method_name)}"
            )
        fill_model_spec(result.model_spec, servable, signature_name)
