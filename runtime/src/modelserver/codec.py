"""TF Serving REST JSON <-> numpy, and TensorProto <-> numpy, with hostile-input limits.

Interface (for rest.py / grpc_service.py; this module never imports TensorFlow at import time):

Errors
  ``ServingError(code: Code, message: str)`` (from ``modelserver.errors``, re-exported here) is
      the one exception every function here raises: ``.code`` is the TF error code
      (``Code.INVALID_ARGUMENT`` ...), ``.http_status`` the REST status of contract section 5.
  ``error_body(message) -> bytes``  the upstream ``{"error": "..."}`` body.

Limits
  ``Limits(max_body_bytes, max_depth, max_elements)``; ``DEFAULT_LIMITS``. A body over
  ``max_body_bytes``, a tensor nested deeper than ``max_depth`` or holding more than
  ``max_elements`` values is refused (INVALID_ARGUMENT) before any array is allocated.

Signatures
  ``TensorSpec(dtype: str, shape: tuple[int, ...] | None)``: dtype is the DataType name
  ("DT_FLOAT"), shape uses -1 for unknown dims and None for unknown rank.
  Build with ``TensorSpec.from_tensor_info(tensor_info_proto)`` or ``TensorSpec.from_tf(tf_spec)``.

Predict (two steps, as upstream: the signature is looked up between them)
  ``req = parse_predict_request(body, limits)`` -> ``PredictRequest`` (``.signature_name`` is ""
      when absent: the caller substitutes "serving_default").
  ``decoded = decode_predict_inputs(req, input_specs, limits)`` -> ``DecodedInputs`` with
      ``.format`` (``RequestFormat.ROW`` for "instances", ``COLUMNAR`` for "inputs") and
      ``.tensors: dict[str, np.ndarray]`` (DT_STRING inputs are object arrays of ``bytes``).
  ``encode_predict_response(outputs, decoded.format) -> bytes``: ``{"predictions"|"outputs": ..}``.

Classify / regress
  ``parse_examples_request(body, limits)`` -> ``ExamplesRequest(signature_name, examples)`` where
      ``examples`` are serialized ``tf.Example`` protos with the context merged in (upstream feeds
      exactly these strings to the signature's ``inputs`` tensor).
  ``classification_results(outputs, n) -> Classifications``;
  ``encode_classify_response(classifications) -> bytes``;
  ``regression_results(outputs, n) -> np.ndarray``; ``encode_regress_response(values) -> bytes``.

gRPC helpers
  (TensorProto <-> numpy lives in ``modelserver.inference``)
  ``examples_from_input_proto(input_proto, limits)``.

Known deviations from upstream: responses are compact JSON (upstream pretty-prints; the parsed
values are identical); floats are written as the shortest text that round-trips to the same
float32/float64 (upstream uses %g or %.9g: same numbers, sometimes different digits); a JSON
``true`` inside a nested (rank >= 2) list of numbers is read as 1 instead of being refused.
Like upstream, inputs are not checked against the signature's shape: the TensorFlow run decides
(``[1.0, 2.0, 3.0]`` fed to an ``x`` declared ``[-1, 1]`` of half_plus_two gives three values).
"""

from __future__ import annotations

import binascii
import enum
import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import orjson

from modelserver.errors import HTTP_STATUS, Code, ServingError, shown

__all__ = [
    "DEFAULT_LIMITS",
    "HTTP_STATUS",
    "Classifications",
    "Code",
    "DecodedInputs",
    "ExamplesRequest",
    "Limits",
    "PredictRequest",
    "RequestFormat",
    "ServingError",
    "TensorSpec",
    "classification_results",
    "decode_predict_inputs",
    "encode_classify_response",
    "encode_predict_response",
    "encode_regress_response",
    "error_body",
    "examples_from_input_proto",
    "parse_examples_request",
    "parse_json_object",
    "parse_predict_request",
    "regression_results",
]


# --------------------------------------------------------------------------- errors


def error_body(message: str) -> bytes:
    """The upstream REST error body ``{"error": message}``."""
    return orjson.dumps({"error": message})


def _invalid(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- limits and specs


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep hostile requests from costing unbounded memory or time.

    ``max_body_bytes`` bounds the JSON text (the HTTP layer should refuse a larger Content-Length
    before reading the body; the parsed document costs at most ~30x the body in Python objects).
    ``max_depth`` bounds the rank of a tensor written as nested lists. ``max_elements`` bounds the
    number of values of one tensor, checked from its declared or implied shape before allocation.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_depth: int = 32
    max_elements: int = 1 << 25

    def check_body(self, size: int) -> None:
        if size > self.max_body_bytes:
            raise _invalid(
                f"Request body is {size} bytes, more than the limit of {self.max_body_bytes} bytes;"
                " send fewer instances per request"
            )


DEFAULT_LIMITS = Limits()

# DataType enum numbers (tensorflow/core/framework/types.proto) and the numpy type of each.
_DTYPE_NUMBERS: dict[int, str] = {
    1: "DT_FLOAT",
    2: "DT_DOUBLE",
    3: "DT_INT32",
    4: "DT_UINT8",
    5: "DT_INT16",
    6: "DT_INT8",
    7: "DT_STRING",
    8: "DT_COMPLEX64",
    9: "DT_INT64",
    10: "DT_BOOL",
    14: "DT_BFLOAT16",
    17: "DT_UINT16",
    18: "DT_COMPLEX128",
    19: "DT_HALF",
    22: "DT_UINT32",
    23: "DT_UINT64",
}
_NUMPY_OF: dict[str, np.dtype[Any]] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT32": np.dtype(np.int32),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT8": np.dtype(np.int8),
    "DT_STRING": np.dtype(object),
    "DT_COMPLEX64": np.dtype(np.complex64),
    "DT_INT64": np.dtype(np.int64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_COMPLEX128": np.dtype(np.complex128),
    "DT_HALF": np.dtype(np.float16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
}
# The types a JSON value can be converted to (upstream AddValueToTensor).
_JSON_INPUT_TYPES = frozenset(
    {
        "DT_FLOAT",
        "DT_DOUBLE",
        "DT_INT32",
        "DT_INT16",
        "DT_INT8",
        "DT_UINT8",
        "DT_STRING",
        "DT_INT64",
        "DT_BOOL",
        "DT_UINT32",
        "DT_UINT64",
    }
)
_INT_RANGES: dict[str, tuple[int, int]] = {
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT16": (-(2**31), 2**31 - 1),  # upstream accepts any int32 for these (IsInt)
    "DT_INT8": (-(2**31), 2**31 - 1),
    "DT_UINT8": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}
_NARROW = {"DT_INT16": (-(2**15), 2**15 - 1), "DT_INT8": (-128, 127), "DT_UINT8": (0, 255)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_EXACT_INT = {"DT_FLOAT": 2**24 - 1, "DT_DOUBLE": 2**53 - 1}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """The DataType name of a numpy dtype (object and bytes arrays are DT_STRING)."""
    if dtype.kind in "OSU":
        return "DT_STRING"
    for name, candidate in _NUMPY_OF.items():
        if candidate == dtype and name != "DT_STRING":
            return name
    return f"DT_INVALID({dtype})"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a signature declares for one input or output tensor."""

    dtype: str
    shape: tuple[int, ...] | None = None

    @classmethod
    def from_tensor_info(cls, info: Any) -> TensorSpec:
        """From a ``tensorflow.TensorInfo`` proto (as in a SignatureDef)."""
        dtype = _DTYPE_NUMBERS.get(int(info.dtype), f"DT_ENUM_{int(info.dtype)}")
        shape_proto = info.tensor_shape
        if shape_proto.unknown_rank:
            return cls(dtype, None)
        return cls(dtype, tuple(int(d.size) for d in shape_proto.dim))

    @classmethod
    def from_tf(cls, spec: Any) -> TensorSpec:
        """From a ``tf.TensorSpec`` (duck-typed: ``.dtype.as_datatype_enum``, ``.shape``)."""
        dtype = _DTYPE_NUMBERS.get(int(spec.dtype.as_datatype_enum), str(spec.dtype))
        dims = spec.shape.as_list() if spec.shape.rank is not None else None
        if dims is None:
            return cls(dtype, None)
        return cls(dtype, tuple(-1 if d is None else int(d) for d in dims))

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        try:
            return _NUMPY_OF[self.dtype]
        except KeyError:
            raise ServingError(
                Code.UNIMPLEMENTED, f"Unsupported tensor type: {self.dtype}"
            ) from None

    def describe_shape(self) -> str:
        return "[?]" if self.shape is None else _shape_text(self.shape)


def _shape_text(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- JSON parsing


def _json_text(value: Any, limit: int = 200) -> str:
    """A JSON rendering of ``value`` for error messages, truncated to ``limit`` characters."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _loads_allowing_nonfinite(body: bytes) -> Any:
    """Parse JSON that may contain NaN / Infinity / -Infinity literals (as upstream accepts)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise _invalid("JSON Parse error: The document is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"JSON Parse error: {exc}") from None


def parse_json_object(body: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, with upstream's error texts."""
    limits.check_body(len(body))
    if not body.strip():
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson (the fast path) refuses the NaN/Infinity literals that upstream accepts.
        if b"NaN" in body or b"Infinity" in body:
            doc = _loads_allowing_nonfinite(body)
        else:
            raise _invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_json_text(doc)} Is not object")
    return doc


def _signature_name(doc: dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(
            f"JSON Value: {_json_text(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


# --------------------------------------------------------------------------- predict requests


class RequestFormat(enum.Enum):
    """How a predict request carried its tensors; the response uses the same format."""

    ROW = "instances"
    COLUMNAR = "inputs"


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A parsed predict body before its signature is known."""

    signature_name: str  # "" when the body names none
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DecodedInputs:
    """Predict inputs as numpy arrays, keyed by signature input name."""

    format: RequestFormat
    tensors: dict[str, np.ndarray]


def parse_predict_request(body: bytes, limits: Limits = DEFAULT_LIMITS) -> PredictRequest:
    """Step 1 of a REST predict: parse the body and read ``signature_name``."""
    doc = parse_json_object(body, limits)
    return PredictRequest(_signature_name(doc), doc)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def decode_predict_inputs(
    request: PredictRequest,
    inputs: Mapping[str, TensorSpec],
    limits: Limits = DEFAULT_LIMITS,
) -> DecodedInputs:
    """Step 2 of a REST predict: turn ``instances`` / ``inputs`` into arrays for ``inputs``."""
    doc = request.doc
    if not inputs:
        raise _invalid(
            f"Failed to get input map for signature: {shown(request.signature_name) or 'DEFAULT'}"
        )
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances and has_inputs:
        raise _invalid(
            f"JSON Value: {_json_text(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid(
                f"JSON Value: {_json_text(doc)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise _invalid(f"JSON Value: {_json_text(doc)} No values in 'instances' array")
        return DecodedInputs(RequestFormat.ROW, _decode_instances(instances, inputs, limits))
    if has_inputs:
        return DecodedInputs(
            RequestFormat.COLUMNAR, _decode_columnar(doc["inputs"], inputs, limits)
        )
    raise _invalid("Missing 'inputs' or 'instances' key")


def _decode_instances(
    instances: list[Any], specs: Mapping[str, TensorSpec], limits: Limits
) -> dict[str, np.ndarray]:
    first = instances[0]
    if not _is_named_object(first):
        if len(specs) > 1:
            raise _invalid(
                "instances is a plain list, but expecting list of objects as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, spec),) = specs.items()
        return {name: _to_array(instances, spec, name, limits, context="instances")}
    names = set(specs)
    columns: dict[str, list[Any]] = {name: [] for name in specs}
    for index, element in enumerate(instances):
        if not _is_named_object(element):
            raise _invalid(f"Expecting object but got list at item {index} of input list")
        for key, value in element.items():
            column = columns.get(key)
            if column is None:
                raise _invalid(
                    f"Failed to process element: {index} key: {shown(key)} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {shown(key)}"
                )
            column.append(value)
        if len(element) != len(names):
            raise _invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{_json_text(element)} keys must be equal to: {','.join(sorted(names))}"
            )
    return {
        name: _to_array(columns[name], spec, name, limits, context="instances")
        for name, spec in specs.items()
    }


def _decode_columnar(
    value: Any, specs: Mapping[str, TensorSpec], limits: Limits
) -> dict[str, np.ndarray]:
    if not _is_named_object(value):
        if len(specs) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, spec),) = specs.items()
        return {name: _to_array(value, spec, name, limits, context="inputs")}
    tensors: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if name not in value:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _to_array(value[name], spec, name, limits, context="inputs")
    return tensors


def _implied_shape(value: Any, name: str, limits: Limits) -> tuple[int, ...]:
    """Shape implied by descending first elements (upstream GetDenseTensorShape), bounded."""
    shape: list[int] = []
    count = 1
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > limits.max_depth:
            raise _invalid(
                f"Input '{name}' is nested deeper than {limits.max_depth} levels; "
                "tensors of that rank are not accepted"
            )
        count *= len(value)
        if not value:
            break
        value = value[0]
    if count > limits.max_elements:
        raise _invalid(
            f"Input '{name}' has {count} values, more than the limit of {limits.max_elements} "
            "per tensor; send fewer instances per request"
        )
    return tuple(shape)


def _to_array(
    value: Any,
    spec: TensorSpec,
    name: str,
    limits: Limits,
    *,
    context: str,
) -> np.ndarray:
    """Convert one JSON tensor (instances: a list of them) to a numpy array."""
    dtype = spec.dtype
    if dtype not in _JSON_INPUT_TYPES:
        raise ServingError(
            Code.UNIMPLEMENTED,
            f"Conversion of JSON Value: {_json_text(value)} to type: {dtype}",
        )
    shape = _implied_shape(value, name, limits)
    if dtype == "DT_STRING":
        array = _string_array(value, shape, name, context)
    else:
        array = _numeric_array(value, shape, spec, name, context)
    # No check against the signature's shape: upstream builds the tensor from the JSON alone and
    # leaves shapes to the session run (graphs that broadcast accept other shapes).
    return array


def _numeric_array(
    value: Any, shape: tuple[int, ...], spec: TensorSpec, name: str, context: str
) -> np.ndarray:
    target = spec.numpy_dtype
    if 0 in shape:
        # An empty list (at any level) has no values to check.
        try:
            return np.zeros(np.array(value, dtype=np.float64).shape, dtype=target)
        except ValueError:
            _diagnose(value, shape, spec.dtype, name, context)
    if (
        len(shape) == 1
        and spec.dtype in ("DT_FLOAT", "DT_DOUBLE")
        and all(type(v) is float for v in value)
        and min(value) >= -_FLOAT32_MAX
        and max(value) <= _FLOAT32_MAX
    ):
        # The common case (a short list of finite floats): no per-value numpy checks needed.
        return np.array(value, dtype=target)
    try:
        raw = np.array(value)
    except (ValueError, OverflowError, TypeError):
        _diagnose(value, shape, spec.dtype, name, context)
    if raw.shape != shape or not _kind_ok(raw, spec.dtype):
        _diagnose(value, shape, spec.dtype, name, context)
    if raw.dtype.kind != "b" and len(shape) == 1 and any(type(v) is bool for v in value):
        # numpy reads true as 1 in a list of numbers; upstream refuses it.
        _diagnose(value, shape, spec.dtype, name, context)
    return raw.astype(target, copy=False)


def _kind_ok(raw: np.ndarray, dtype: str) -> bool:
    """Vectorised check that every value of ``raw`` converts to ``dtype`` as upstream allows."""
    kind = raw.dtype.kind
    if dtype == "DT_BOOL":
        return kind == "b"
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if kind == "f":
            if dtype == "DT_DOUBLE":
                return True
            if float(np.abs(raw).max()) <= _FLOAT32_MAX:
                return True
            finite = raw[np.isfinite(raw)]  # NaN or Infinity present: check the others
            return finite.size == 0 or float(np.abs(finite).max()) <= _FLOAT32_MAX
        if kind in "iu":
            limit = _MAX_EXACT_INT[dtype]
            return int(raw.max()) <= limit and int(raw.min()) >= -limit
        return False
    if kind not in "iu":
        return False
    low, high = _NARROW.get(dtype, _INT_RANGES[dtype])
    return int(raw.min()) >= low and int(raw.max()) <= high


def _diagnose(value: Any, shape: tuple[int, ...], dtype: str, name: str, context: str) -> NoReturn:
    """Walk ``value`` as upstream FillTensorProto does and raise for the first problem."""
    rank = len(shape)
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, level, path = stack.pop()
        where = f"{context}{path}" if context else name
        if isinstance(item, list):
            if level >= rank:
                raise _invalid(
                    f"Encountered list at unexpected level: {level} expected < {rank} "
                    f"(input '{name}' at {where})"
                )
            if len(item) != shape[level]:
                raise _invalid(
                    f"Encountered list at unexpected size: {len(item)} at level: {level} "
                    f"expected size: {shape[level]} (input '{name}' at {where}: lists of one "
                    "tensor must be regular, not ragged)"
                )
            stack.extend(
                (child, level + 1, f"{path}[{i}]") for i, child in reversed(list(enumerate(item)))
            )
            continue
        if level != rank:
            raise _invalid(
                f"JSON Value: {_json_text(item)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank} (input '{name}' at {where})"
            )
        if dtype == "DT_STRING":
            _string_leaf(item, name, where)
        else:
            _check_scalar(item, dtype, name, where)
    raise _invalid(f"Input '{name}' could not be converted to {dtype}")


def _check_scalar(item: Any, dtype: str, name: str, where: str) -> None:
    def type_error() -> ServingError:
        return _invalid(
            f"JSON Value: {_json_text(item)} Type: {_json_type(item)} is not of expected type: "
            f"{dtype} (input '{name}' at {where})"
        )

    if dtype == "DT_BOOL":
        if not isinstance(item, bool):
            raise type_error()
        return
    if isinstance(item, bool) or not isinstance(item, int | float):
        raise type_error()
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        lossy = False
        if isinstance(item, int):
            lossy = abs(item) > _MAX_EXACT_INT[dtype]
        elif dtype == "DT_FLOAT" and math.isfinite(item):
            lossy = abs(item) > _FLOAT32_MAX
        if lossy:
            target = "float" if dtype == "DT_FLOAT" else "double"
            raise _invalid(
                f"Cannot convert JSON value: {_json_text(item)} to {target} without loss of "
                f"precision. (input '{name}' at {where})"
            )
        return
    if not isinstance(item, int):
        raise type_error()
    low, high = _NARROW.get(dtype, _INT_RANGES[dtype])
    if not low <= item <= high:
        if dtype in _NARROW and _INT_RANGES[dtype][0] <= item <= _INT_RANGES[dtype][1]:
            raise _invalid(
                f"JSON Value: {item} is out of range for {dtype} [{low}, {high}] "
                f"(input '{name}' at {where})"
            )
        raise type_error()


def _decode_b64(item: dict[str, str], name: str, where: str) -> bytes:
    text = item["b64"]
    try:
        data = text.encode("ascii")
        missing = -len(data) % 4
        if missing == 3:
            raise ValueError("bad length")
        return binascii.a2b_base64(data + b"=" * missing, strict_mode=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise _invalid(f"Unable to base64 decode (input '{name}' at {where})") from None


def _string_leaf(item: Any, name: str, where: str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(
                f"JSON string at {where} of input '{name}' is not valid Unicode"
            ) from None
    if isinstance(item, dict):
        if not _is_b64(item):
            raise _invalid(
                f"JSON Value: {_json_text(item)} not formatted correctly for base64 data "
                f"(input '{name}' at {where})"
            )
        return _decode_b64(item, name, where)
    raise _invalid(
        f"JSON Value: {_json_text(item)} Type: {_json_type(item)} is not of expected type: "
        f"DT_STRING (input '{name}' at {where})"
    )


def _string_array(value: Any, shape: tuple[int, ...], name: str, context: str) -> np.ndarray:
    rank = len(shape)
    if rank == 0:
        scalar = np.empty((), dtype=object)
        scalar[()] = _string_leaf(value, name, context)
        return scalar
    flat: list[bytes] = []
    if rank == 1 and isinstance(value, list):
        # Fast path for the common [-1] string input (e.g. b64 JPEG images).
        for index, item in enumerate(value):
            if isinstance(item, list):
                _diagnose(value, shape, "DT_STRING", name, context)
            flat.append(_string_leaf(item, name, f"{context}[{index}]"))
    else:
        stack: list[tuple[Any, int, str]] = [(value, 0, "")]
        while stack:
            item, level, path = stack.pop()
            if isinstance(item, list):
                if level >= rank or len(item) != shape[level]:
                    _diagnose(value, shape, "DT_STRING", name, context)
                stack.extend(
                    (child, level + 1, f"{path}[{i}]")
                    for i, child in reversed(list(enumerate(item)))
                )
                continue
            if level != rank:
                _diagnose(value, shape, "DT_STRING", name, context)
            flat.append(_string_leaf(item, name, f"{context}{path}"))
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


# --------------------------------------------------------------------------- predict responses

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _output_value(name: str, array: np.ndarray) -> Any:
    """A JSON-serialisable form of one output (numeric arrays stay numpy for orjson)."""
    kind = array.dtype.kind
    if kind in "biuf":
        if array.dtype == np.float16 or array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        if array.ndim == 0:
            return array[()]  # a numpy scalar: orjson would write a 0-d array as a list
        return np.ascontiguousarray(array)
    if kind in "OSU":
        as_bytes = name.endswith("_bytes")
        return _strings_to_json(array.tolist(), as_bytes)
    raise _invalid(f"Failed to write JSON value for tensor type: {dtype_name(array.dtype)}")


def _strings_to_json(value: Any, as_bytes: bool) -> Any:
    if isinstance(value, list):
        return [_strings_to_json(v, as_bytes) for v in value]
    if isinstance(value, str):
        value = value.encode("utf-8")
    if as_bytes:
        return {"b64": binascii.b2a_base64(value, newline=False).decode("ascii")}
    return value.decode("utf-8", errors="replace")


def _nonfinite_fragment(array: np.ndarray) -> Any:
    """Render a float array holding NaN/Infinity as upstream does (bare JSON literals)."""

    def render(sub: np.ndarray) -> bytes:
        if sub.ndim == 0:
            v = sub[()]
            if np.isnan(v):
                return b"NaN"
            if np.isinf(v):
                return b"-Infinity" if v < 0 else b"Infinity"
            return orjson.dumps(v, option=_DUMP_OPTIONS)
        return b"[" + b",".join(render(part) for part in sub) + b"]"

    return orjson.Fragment(render(array))


def _with_nonfinite(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return _nonfinite_fragment(value)
        return value
    if isinstance(value, np.floating) and not np.isfinite(value):
        return _nonfinite_fragment(np.asarray(value))
    if isinstance(value, dict):
        return {k: _with_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_nonfinite(v) for v in value]
    return value


def _dumps(payload: Any, may_be_nonfinite: bool) -> bytes:
    try:
        text = orjson.dumps(payload, option=_DUMP_OPTIONS)
    except TypeError as exc:
        raise ServingError(Code.INTERNAL, f"Failed to write JSON response: {exc}") from None
    # orjson writes NaN/Infinity as null; upstream writes the literals. A float output is the
    # only source of null here, so its absence proves the fast result right.
    if may_be_nonfinite and b"null" in text:
        text = orjson.dumps(_with_nonfinite(payload), option=_DUMP_OPTIONS)
    return text


def encode_predict_response(outputs: Mapping[str, np.ndarray], fmt: RequestFormat) -> bytes:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar), as upstream."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    items = sorted(outputs.items())
    has_float = any(array.dtype.kind == "f" for _, array in items)
    if fmt is RequestFormat.COLUMNAR:
        if len(items) == 1:
            name, array = items[0]
            payload: Any = {"outputs": _output_value(name, array)}
        else:
            payload = {"outputs": {name: _output_value(name, array) for name, array in items}}
        return _dumps(payload, has_float)
    batch = -1
    for name, array in items:
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                f"expecting: {batch}"
            )
        batch = array.shape[0]
    if len(items) == 1:
        name, array = items[0]
        payload = {"predictions": _output_value(name, array)}
    else:
        columns = [(name, _output_value(name, array)) for name, array in items]
        payload = {"predictions": [{name: col[i] for name, col in columns} for i in range(batch)]}
    return _dumps(payload, has_float)


# --------------------------------------------------------------------------- classify / regress


@dataclass(frozen=True, slots=True)
class ExamplesRequest:
    """A parsed classify/regress body: serialized tf.Example protos, context merged in."""

    signature_name: str
    examples: list[bytes]


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_from_json(name: str, content: Any) -> bytes:
    """Serialize one tf.train.Feature from its JSON value(s), with upstream's type rules."""
    values = content if isinstance(content, list) else [content]
    name = shown(name)  # a client-chosen feature name, as the messages below repeat it
    kind = ""
    strings: list[bytes] = []
    floats: list[float] = []
    ints: list[int] = []

    def want(this: str) -> None:
        nonlocal kind
        if kind and kind != this:
            raise _invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = this

    for value in values:
        if (
            value is None
            or isinstance(value, list)
            or (isinstance(value, dict) and not _is_b64(value))
        ):
            raise _invalid(
                f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
            )
        if isinstance(value, bool):
            want("int64")
            ints.append(1 if value else 0)
        elif isinstance(value, dict):
            want("bytes")
            strings.append(_decode_b64(value, name, f"feature {name}"))
        elif isinstance(value, str):
            want("bytes")
            try:
                strings.append(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise _invalid(f"Feature: {name} has a string that is not valid Unicode") from None
        elif isinstance(value, float):
            want("float")
            if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
                raise _invalid(
                    f"Cannot convert JSON value: {value} to float without loss of precision."
                )
            floats.append(value)
        else:
            if value > 2**63 - 1:
                want("int64")
                raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
            if value < -(2**63):
                raise _invalid(f"Feature: {name} has an integer below the int64 range")
            want("int64")
            ints.append(value)
    if kind == "bytes":
        return _field(1, b"".join(_field(1, s) for s in strings))
    if kind == "float":
        return _field(2, _field(1, struct.pack(f"<{len(floats)}f", *floats)))
    if kind == "int64":
        return _field(3, _field(1, b"".join(_varint(i) for i in ints)))
    return b""  # a feature with no values: kind not set


def _example_from_json(value: Any) -> bytes:
    """Serialize one tf.train.Example from ``{feature: value | [values]}``."""
    if not isinstance(value, dict):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, _feature_from_json(key, content)))
        for key, content in value.items()
    )
    return _field(1, entries) if entries else b""


def parse_examples_request(body: bytes, limits: Limits = DEFAULT_LIMITS) -> ExamplesRequest:
    """Parse a REST classify/regress body into serialized tf.Example protos."""
    doc = parse_json_object(body, limits)
    signature_name = _signature_name(doc)
    context = b""
    if "context" in doc:
        context = _example_from_json(doc["context"])
    if "examples" not in doc:
        raise _invalid(
            f"JSON Value: {_json_text(doc)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _invalid(
            f"JSON Value: {_json_text(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise _invalid(f"JSON Value: {_json_text(doc)} 'examples' value is an empty array")
    if len(examples) > limits.max_elements:
        raise _invalid(f"{len(examples)} examples are more than the limit of {limits.max_elements}")
    # Concatenated serializations merge (protobuf semantics): context first, example wins.
    return ExamplesRequest(signature_name, [context + _example_from_json(e) for e in examples])


@dataclass(frozen=True, slots=True)
class Classifications:
    """Per example, per class: a label (b"" when the signature has no ``classes``) and a score."""

    labels: list[list[bytes]]
    scores: np.ndarray  # float32 [num_examples, num_classes]; zeros without a ``scores`` output


def classification_results(outputs: Mapping[str, np.ndarray], num_examples: int) -> Classifications:
    """Apply upstream's classification post-processing to a classify signature's outputs."""
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    if classes is None and scores is None:
        raise _invalid(
            "Expected classification signature outputs to contain at least one of "
            "'classes' or 'scores'"
        )
    for label, tensor, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise _invalid(
                f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}"
            )
        if dtype_name(tensor.dtype) != want:
            raise _invalid(f"Expected {label} Tensor of {want}. Got: {dtype_name(tensor.dtype)}")
        if tensor.shape[0] != num_examples:
            raise _invalid(
                f"Expected {label} output batch size of {num_examples}. Got: {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    reference = classes if classes is not None else scores
    assert reference is not None
    num_classes = int(reference.shape[1])
    if classes is not None:
        labels = [
            [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in row]
            for row in classes.tolist()
        ]
    else:
        labels = [[b""] * num_classes for _ in range(num_examples)]
    score_array = (
        np.ascontiguousarray(scores, dtype=np.float32)
        if scores is not None
        else np.zeros((num_examples, num_classes), dtype=np.float32)
    )
    return Classifications(labels, score_array)


def regression_results(outputs: Mapping[str, np.ndarray], num_examples: int) -> np.ndarray:
    """Apply upstream's regression post-processing: one float32 per example."""
    output = outputs.get("outputs")
    if output is None:
        raise ServingError(Code.FAILED_PRECONDITION, "No regression outputs found in SignatureDef")
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise _invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(output.shape)}"
        )
    if output.shape[0] != num_examples:
        raise _invalid(
            f"Input batch size did not match output batch size: {num_examples} vs. "
            f"{output.shape[0]}"
        )
    if output.dtype != np.float32:
        raise _invalid(f"Expected output Tensor of DT_FLOAT.  Got: {dtype_name(output.dtype)}")
    return np.ascontiguousarray(output.reshape(num_examples))


def encode_classify_response(result: Classifications) -> bytes:
    """``{"results": [[[label, score], ...], ...]}``."""
    if not result.labels:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    rows = [
        [
            [label.decode("utf-8", errors="replace"), score]
            for label, score in zip(labels, scores, strict=True)
        ]
        for labels, scores in zip(result.labels, result.scores, strict=True)
    ]
    return _dumps({"results": rows}, True)


def encode_regress_response(values: np.ndarray) -> bytes:
    """``{"results": [v, ...]}``."""
    if values.size == 0:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    return _dumps({"results": np.ascontiguousarray(values, dtype=np.float32)}, True)


# --------------------------------------------------------------------------- gRPC helpers


def examples_from_input_proto(input_proto: Any, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """Serialized examples of a ``tensorflow.serving.Input`` (context merged, as upstream)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in with_context.examples]
    else:
        examples = []
    if not examples:
        raise _invalid("Input is empty.")
    if len(examples) > limits.max_elements:
        raise _invalid(f"{len(examples)} examples are more than the limit of {limits.max_elements}")
    return examples
