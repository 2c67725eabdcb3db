"""REST JSON and gRPC tensors, without TensorFlow or numpy.

A predict body in REST's shapes (``{"instances": ...}`` rows or ``{"inputs": ...}`` columns) becomes
one :class:`Tensor` per signature input, typed from the model's metadata; a Tensor becomes a
``TensorProto`` and back; gRPC outputs are shaped like the REST answer (``predictions`` or
``outputs``, ``{"b64": ...}`` for bytes), so ``predict --grpc`` prints what REST would.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tfstack.errors import StackError, UsageError
from tfstack.serving.protos import load_serving_protos

DEFAULT_SIGNATURE = "serving_default"


# dtype name -> (enum value, repeated field, struct code for tensor_content)
DTYPES: dict[str, tuple[int, str, str]] = {
    "DT_FLOAT": (1, "float_val", "f"),
    "DT_DOUBLE": (2, "double_val", "d"),
    "DT_INT32": (3, "int_val", "i"),
    "DT_UINT8": (4, "int_val", "B"),
    "DT_INT16": (5, "int_val", "h"),
    "DT_INT8": (6, "int_val", "b"),
    "DT_STRING": (7, "string_val", ""),
    "DT_INT64": (9, "int64_val", "q"),
    "DT_BOOL": (10, "bool_val", "?"),
    "DT_UINT16": (17, "int_val", "H"),
    "DT_HALF": (19, "half_val", "e"),
    "DT_UINT32": (22, "uint32_val", "I"),
    "DT_UINT64": (23, "uint64_val", "Q"),
}
DTYPE_NAMES = {number: name for name, (number, _, _) in DTYPES.items()}


@dataclass(frozen=True)
class Tensor:
    """A dense tensor as plain Python: dtype name, shape and row-major flat values."""

    dtype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]

    def to_nested(self) -> Any:
        """Back to nested lists (a scalar for shape ())."""
        if not self.shape:
            return self.values[0] if self.values else None
        return _reshape(list(self.values), list(self.shape))


def _reshape(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _shape_and_flat(value: Any, where: str) -> tuple[tuple[int, ...], list[Any]]:
    """Shape and row-major values of a nested list; rejects ragged lists."""
    if not isinstance(value, list):
        return (), [value]
    if not value:
        return (0,), []
    shapes_and_flats = [_shape_and_flat(item, f"{where}[{i}]") for i, item in enumerate(value)]
    first = shapes_and_flats[0][0]
    flat: list[Any] = []
    for index, (shape, items) in enumerate(shapes_and_flats):
        if shape != first:
            raise UsageError(
                f"{where}: ragged list: element {index} has shape {list(shape)}, element 0 has "
                f"shape {list(first)}; tensors must be rectangular"
            )
        flat.extend(items)
    return (len(value), *first), flat


def _convert_scalar(item: Any, dtype: str, where: str) -> Any:
    if dtype == "DT_STRING":
        if isinstance(item, dict) and set(item) == {"b64"}:
            return base64.b64decode(item["b64"])
        if isinstance(item, str):
            return item.encode()
        if isinstance(item, bytes):
            return item
        raise UsageError(
            f"{where}: expected a string or {{'b64': ...}} for DT_STRING, got {item!r}"
        )
    if isinstance(item, (dict, str)) and dtype != "DT_STRING":
        raise UsageError(f"{where}: expected a number for {dtype}, got {item!r}")
    if dtype == "DT_BOOL":
        return bool(item)
    if dtype in ("DT_FLOAT", "DT_DOUBLE", "DT_HALF"):
        return float(item)
    if isinstance(item, float) and not item.is_integer():
        raise UsageError(f"{where}: {item!r} is not an integer but the input is {dtype}")
    return int(item)


def json_to_tensor(value: Any, dtype: str, where: str = "input") -> Tensor:
    """A JSON value (nested lists, numbers, strings, ``{"b64": ...}``) as a Tensor of ``dtype``."""
    if dtype not in DTYPES:
        raise UsageError(f"{where}: dtype {dtype} is not supported by tfstack's gRPC client")
    shape, flat = _shape_and_flat(value, where)
    return Tensor(dtype, shape, tuple(_convert_scalar(v, dtype, where) for v in flat))


def to_tensor_proto(tensor: Tensor) -> Any:
    """A ``tensorflow.TensorProto`` holding ``tensor`` (typed repeated fields)."""
    load_serving_protos()
    from tensorflow.core.framework import tensor_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    number, field_name, _ = DTYPES[tensor.dtype]
    proto = tensor_pb2.TensorProto(dtype=number)
    for size in tensor.shape:
        proto.tensor_shape.dim.add(size=size)
    if tensor.dtype == "DT_HALF":
        bits = [struct.unpack("<H", struct.pack("<e", v))[0] for v in tensor.values]
        proto.half_val.extend(bits)
    else:
        getattr(proto, field_name).extend(tensor.values)
    return proto


def from_tensor_proto(proto: Any) -> Tensor:
    """A Tensor from a ``TensorProto`` (tensor_content or typed fields; one value broadcasts)."""
    name = DTYPE_NAMES.get(int(proto.dtype))
    if name is None:
        raise StackError(f"the server answered a tensor of unsupported dtype enum {proto.dtype}")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    count = math.prod(shape) if shape else 1
    _, field_name, code = DTYPES[name]
    values: list[Any]
    if proto.tensor_content and code:
        values = list(struct.unpack(f"<{count}{code}", proto.tensor_content))
    elif name == "DT_HALF":
        values = [struct.unpack("<e", struct.pack("<H", bits))[0] for bits in proto.half_val]
    else:
        values = list(getattr(proto, field_name))
    if len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise StackError(
            f"the server answered a {name} tensor of shape {list(shape)} with {len(values)} values"
        )
    if name in ("DT_FLOAT", "DT_HALF"):
        values = [_shortest_float32(v) for v in values]
    return Tensor(name, shape, tuple(values))


def _shortest_float32(value: float) -> float:
    """float32 values print like TF Serving's REST JSON (2.5, not 2.5000000001)."""
    if math.isnan(value) or math.isinf(value):
        return value
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
            return candidate
    return value


def tensor_to_json(name: str, tensor: Tensor) -> Any:
    """REST's JSON rendering: strings as text, ``{"b64": ...}`` for ``*_bytes`` or non-UTF-8."""
    if tensor.dtype != "DT_STRING":
        return tensor.to_nested()

    def render(item: bytes) -> Any:
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(item).decode()}
        try:
            return item.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode()}

    rendered = Tensor(tensor.dtype, tensor.shape, tuple(render(v) for v in tensor.values))
    return rendered.to_nested()


@dataclass(frozen=True)
class SignatureInputs:
    """The inputs of one signature: name -> dtype, in a stable order."""

    signature: str
    dtypes: dict[str, str]


def signature_inputs(metadata: Mapping[str, Any], signature: str | None) -> SignatureInputs:
    """Input dtypes of a signature from a REST/gRPC metadata document."""
    name = signature or DEFAULT_SIGNATURE
    signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    if name not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise UsageError(
            f"model {metadata.get('model_spec', {}).get('name', '?')} has no signature {name!r}",
            hint=f"signatures: {known}",
        )
    inputs = signatures[name].get("inputs", {})
    return SignatureInputs(
        name, {key: str(info.get("dtype")) for key, info in sorted(inputs.items())}
    )


def _is_named_row(item: Any) -> bool:
    return isinstance(item, dict) and set(item) != {"b64"}


@dataclass(frozen=True)
class GrpcRequest:
    """A REST predict body translated for gRPC: tensors per input and which answer format to use."""

    signature: str
    tensors: dict[str, Tensor]
    row_format: bool


def rest_body_to_grpc(body: Mapping[str, Any], inputs: SignatureInputs) -> GrpcRequest:
    """Translate ``{"instances": ...}`` or ``{"inputs": ...}`` into one Tensor per input."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise UsageError("the request body needs exactly one of 'instances' or 'inputs'")
    names = list(inputs.dtypes)

    def single_name() -> str:
        if len(names) != 1:
            raise UsageError(
                f"signature {inputs.signature} has inputs {names}: name them, e.g. "
                '{"inputs": {"' + (names[0] if names else "x") + '": ...}}'
            )
        return names[0]

    values: dict[str, Any] = {}
    if has_instances:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise UsageError("'instances' must be a list (one entry per example)")
        if rows and all(_is_named_row(row) for row in rows):
            keys = set(rows[0])
            for index, row in enumerate(rows):
                if set(row) != keys:
                    raise UsageError(
                        f"instances[{index}] has keys {sorted(row)}, not {sorted(keys)}"
                    )
            values = {key: [row[key] for row in rows] for key in sorted(keys)}
        else:
            values = {single_name(): rows}
    else:
        columns = body["inputs"]
        values = dict(columns) if _is_named_row(columns) else {single_name(): columns}
    tensors: dict[str, Tensor] = {}
    for key, value in values.items():
        if key not in inputs.dtypes:
            raise UsageError(
                f"signature {inputs.signature} has no input {key!r}", hint=f"inputs: {names}"
            )
        tensors[key] = json_to_tensor(value, inputs.dtypes[key], where=f"input {key}")
    return GrpcRequest(inputs.signature, tensors, row_format=has_instances)


def grpc_outputs_to_rest(outputs: Mapping[str, Tensor], row_format: bool) -> dict[str, Any]:
    """gRPC outputs shaped like the REST answer: ``predictions`` (rows) or ``outputs`` (columns)."""
    rendered = {name: tensor_to_json(name, tensor) for name, tensor in sorted(outputs.items())}
    if not row_format:
        if len(rendered) == 1:
            return {"outputs": next(iter(rendered.values()))}
        return {"outputs": rendered}
    if len(rendered) == 1:
        return {"predictions": next(iter(rendered.values()))}
    batch = {len(v) if isinstance(v, list) else 0 for v in rendered.values()}
    if len(batch) != 1:
        return {"outputs": rendered}
    size = batch.pop()
    return {"predictions": [{k: v[i] for k, v in rendered.items()} for i in range(size)]}
