"""REST and gRPC clients for a running TF Serving stack (the official server or tfstack's runtime).

Used by ``invoke predict`` / ``inspect`` / ``status``, the waits and smoke checks of ``invoke up``,
and the integration tests. Request building is pure (``model_path``, ``rest_inputs_to_tensors``,
``to_tensor_proto``...) and unit-tested; I/O goes through one method per transport.

The gRPC side uses the protos and stubs of ``tensorflow-serving-api`` and converts JSON values to
``TensorProto`` by hand (no ``tf.make_tensor_proto``, no numpy). Those protos import modules of the
``tensorflow`` package; :func:`tfstack.serving.protos.load_serving_protos` loads them without
starting TensorFlow's runtime (0.3 s instead of 3-4 s), and only when gRPC is used.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import requests
from google.protobuf import json_format, text_format

from tfstack.errors import StackError, UsageError
from tfstack.serving.protos import load_serving_protos

DEFAULT_SIGNATURE = "serving_default"
GRPC_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
STATES = ("UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END")


class ServingRequestError(StackError):
    """The server answered a request with an error (HTTP status or gRPC code kept for callers)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status  # HTTP status (REST)
        self.code = code  # TF / gRPC status code name, e.g. "NOT_FOUND"


@dataclass(frozen=True)
class ModelRef:
    """A model, optionally pinned to a version or a version label (never both)."""

    name: str
    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.label is not None:
            raise UsageError(
                f"model {self.name}: give a version or a label, not both "
                f"(version {self.version}, label {self.label!r})"
            )

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name} version {self.version}"
        if self.label is not None:
            return f"{self.name} label {self.label}"
        return self.name


@dataclass(frozen=True)
class VersionState:
    """One entry of TF Serving's model_version_status."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code not in ("OK", "", "0")


@dataclass(frozen=True)
class Endpoints:
    """Where the stack listens on the host."""

    host: str
    rest_port: int
    grpc_port: int

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


# --------------------------------------------------------------------------------------------
# Pure request building


def model_path(
    ref: ModelRef, verb: Literal["", "metadata", "predict", "classify", "regress"] = ""
) -> str:
    """The REST path for a model, version or label, e.g. ``/v1/models/m/labels/stable:predict``."""
    path = f"/v1/models/{ref.name}"
    if ref.version is not None:
        path += f"/versions/{ref.version}"
    elif ref.label is not None:
        path += f"/labels/{ref.label}"
    if verb == "metadata":
        return path + "/metadata"
    if verb:
        return f"{path}:{verb}"
    return path


def parse_version_status(document: Mapping[str, Any]) -> list[VersionState]:
    """``{"model_version_status": [...]}`` from REST → sorted VersionState list."""
    states: list[VersionState] = []
    for entry in document.get("model_version_status", []):
        status = entry.get("status") or {}
        states.append(
            VersionState(
                version=int(entry.get("version", 0)),
                state=str(entry.get("state", "UNKNOWN")),
                error_code=str(status.get("error_code", "OK")),
                error_message=str(status.get("error_message", "")),
            )
        )
    return sorted(states, key=lambda s: s.version)


def _error_text(response: requests.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(document, dict) and "error" in document:
        return str(document["error"])
    return response.text.strip()[:500]


class RestClient:
    """TF Serving's REST API on one base URL; never uses proxies (traffic stays on 127.0.0.1)."""

    def __init__(
        self, base_url: str, *, timeout: float = 30.0, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """The one place REST requests are sent: JSON in, JSON out, ServingRequestError."""
        url = self.base_url + path
        response = self.session.request(
            method, url, json=body, timeout=timeout if timeout is not None else self.timeout
        )
        if response.status_code >= 400:
            raise ServingRequestError(
                f"{method} {path} answered HTTP {response.status_code}: {_error_text(response)}",
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ServingRequestError(
                f"{method} {path} answered HTTP {response.status_code} with a body that is not "
                f"JSON: {response.text[:200]!r}",
                status=response.status_code,
            ) from exc

    def model_status(self, ref: ModelRef, timeout: float | None = None) -> list[VersionState]:
        return parse_version_status(self.request("GET", model_path(ref), timeout=timeout))

    def metadata(self, ref: ModelRef) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", model_path(ref, "metadata"))
        return result

    def predict(
        self,
        ref: ModelRef,
        body: Mapping[str, Any],
        *,
        method: Literal["predict", "classify", "regress"] = "predict",
        signature: str | None = None,
    ) -> dict[str, Any]:
        payload = dict(body)
        if signature:
            payload["signature_name"] = signature
        result: dict[str, Any] = self.request("POST", model_path(ref, method), payload)
        return result


# --------------------------------------------------------------------------------------------
# JSON <-> TensorProto without TensorFlow or numpy

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


# --------------------------------------------------------------------------------------------
# gRPC


def _fill_model_spec(target: Any, ref: ModelRef, signature: str | None = None) -> None:
    target.name = ref.name
    if ref.version is not None:
        target.version.value = ref.version
    elif ref.label is not None:
        target.version_label = ref.label
    if signature:
        target.signature_name = signature


def predict_request(
    ref: ModelRef, tensors: Mapping[str, Tensor], *, signature: str | None = None
) -> Any:
    """A ``tensorflow.serving.PredictRequest`` for ``ref`` with ``tensors`` as its inputs."""
    load_serving_protos()
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    request = predict_pb2.PredictRequest()
    _fill_model_spec(request.model_spec, ref, signature)
    for name, tensor in tensors.items():
        request.inputs[name].CopyFrom(to_tensor_proto(tensor))
    return request


@dataclass
class GrpcPrediction:
    """A gRPC predict answer: the resolved model spec and the outputs."""

    model: str
    version: int | None
    signature: str
    outputs: dict[str, Tensor] = field(default_factory=dict)


def _code_name(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # pragma: no cover - defensive, grpc internals
            return "UNKNOWN"
    return "UNKNOWN"


class GrpcClient:
    """TF Serving's gRPC PredictionService and ModelService on one target."""

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        # Every proto and stub the methods import, loaded once without TensorFlow's runtime.
        load_serving_protos()
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.enable_http_proxy", 0),
        ]
        self._channel = grpc.insecure_channel(target, options=options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, method: Any, request: Any, timeout: float | None) -> Any:
        """The one place gRPC calls are made; errors as ServingRequestError with the code name."""

        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            code = _code_name(exc)
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise ServingRequestError(
                f"gRPC {what} on {self.target} failed: {code}: {details}", code=code
            ) from exc

    @staticmethod
    def _model_spec(target: Any, ref: ModelRef, signature: str | None = None) -> None:
        _fill_model_spec(target, ref, signature)

    def predict(
        self, ref: ModelRef, tensors: Mapping[str, Tensor], *, signature: str | None = None
    ) -> GrpcPrediction:
        from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

        request = predict_request(ref, tensors, signature=signature)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        response = self._call(f"Predict({ref})", stub.Predict, request, None)
        spec = response.model_spec
        return GrpcPrediction(
            model=spec.name,
            version=spec.version.value if spec.HasField("version") else None,
            signature=spec.signature_name,
            outputs={k: from_tensor_proto(v) for k, v in response.outputs.items()},
        )

    def predict_json(
        self, ref: ModelRef, body: Mapping[str, Any], *, signature: str | None = None
    ) -> dict[str, Any]:
        """A REST-style body in, a REST-style answer out, over gRPC (types from the metadata)."""
        chosen = signature or body.get("signature_name") or None
        inputs = signature_inputs(self.metadata(ref), chosen)
        request = rest_body_to_grpc(body, inputs)
        prediction = self.predict(ref, request.tensors, signature=request.signature)
        return grpc_outputs_to_rest(prediction.outputs, request.row_format)

    def metadata(self, ref: ModelRef) -> dict[str, Any]:
        """GetModelMetadata, rendered in the same JSON shape as the REST metadata answer."""
        from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, ref)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        response = self._call(f"GetModelMetadata({ref})", stub.GetModelMetadata, request, None)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "model_spec": {
                "name": response.model_spec.name,
                "signature_name": response.model_spec.signature_name,
                "version": str(response.model_spec.version.value),
            },
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True
                )
            },
        }

    def model_status(self, ref: ModelRef, timeout: float | None = None) -> list[VersionState]:
        from tensorflow_serving.apis import (  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow
            get_model_status_pb2,
            model_service_pb2_grpc,
        )

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, ref)
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        response = self._call(f"GetModelStatus({ref})", stub.GetModelStatus, request, timeout)
        enum = get_model_status_pb2.ModelVersionStatus.State
        from tensorflow.core.protobuf import error_codes_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

        return sorted(
            (
                VersionState(
                    version=int(s.version),
                    state=enum.Name(s.state),
                    error_code=error_codes_pb2.Code.Name(s.status.error_code),
                    error_message=s.status.error_message,
                )
                for s in response.model_version_status
            ),
            key=lambda s: s.version,
        )

    def reload_config(self, config_text: str, *, timeout: float) -> None:
        """ModelService.HandleReloadConfigRequest with a models.config text (model_config_list)."""
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow
        from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(config_text, config)
        except text_format.ParseError as exc:
            raise StackError(f"models.config does not parse as ModelServerConfig: {exc}") from exc
        request = model_management_pb2.ReloadConfigRequest(config=config)
        stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        response = self._call(
            "HandleReloadConfigRequest", stub.HandleReloadConfigRequest, request, timeout
        )
        if response.status.error_code != 0:
            from tensorflow.core.protobuf import error_codes_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

            code = error_codes_pb2.Code.Name(response.status.error_code)
            raise ServingRequestError(
                "the server rejected the new model config: "
                f"{code}: {response.status.error_message}",
                code=code,
            )


def matches_expected(actual: Any, expected: Any, tolerance: float) -> bool:
    """Whether an answer equals the expected JSON, numbers within an absolute ``tolerance``."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and set(actual) == set(expected)
            and all(matches_expected(actual[k], expected[k], tolerance) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(
                matches_expected(a, e, tolerance) for a, e in zip(actual, expected, strict=True)
            )
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(actual, expected, rel_tol=0.0, abs_tol=tolerance)
    equal: bool = actual == expected
    return equal


def summarize(value: Any, limit: int = 200) -> str:
    """A one-line, bounded rendering of a JSON value for messages."""

    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__: Sequence[str] = (
    "Endpoints",
    "GrpcClient",
    "ModelRef",
    "RestClient",
    "ServingRequestError",
    "Tensor",
    "VersionState",
)


def _shape_text(shape: Mapping[str, Any] | None) -> str:
    if not shape or shape.get("unknown_rank"):
        return "unknown_rank"
    sizes = [str(int(dim.get("size", -1))) for dim in shape.get("dim", [])]
    if len(sizes) == 1:
        return f"({sizes[0]})"
    return "(" + ", ".join(sizes) + ")"


def format_signatures(metadata: Mapping[str, Any]) -> str:
    """Signatures, inputs and outputs like ``saved_model_cli show --all``, from server metadata."""
    spec = metadata.get("model_spec", {})
    signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    lines = [f"model {spec.get('name', '?')} version {spec.get('version', '?')}", ""]
    lines.append("MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:")
    for key in sorted(signatures):
        signature = signatures[key]
        lines += ["", f"signature_def['{key}']:"]
        for kind, word in (("inputs", "input"), ("outputs", "output")):
            lines.append(f"  The given SavedModel SignatureDef contains the following {word}(s):")
            for name, info in sorted(signature.get(kind, {}).items()):
                lines += [
                    f"    {kind}['{name}'] tensor_info:",
                    f"        dtype: {info.get('dtype', 'DT_INVALID')}",
                    f"        shape: {_shape_text(info.get('tensor_shape'))}",
                    f"        name: {info.get('name', '')}",
                ]
        lines.append(f"  Method name is: {signature.get('method_name', '')}")
    return "\n".join(lines)
