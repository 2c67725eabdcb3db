"""REST and gRPC clients for a running TF Serving stack (the official server or tfstack's runtime).

Used by ``invoke predict`` / ``inspect`` / ``status``, the waits and smoke checks of ``invoke up``,
and the integration tests. Request building is pure (``model_path``, ``rest_inputs_to_tensors``,
``to_tensor_proto``...) and unit-tested; I/O goes through one method per transport.

The gRPC side uses the protos and stubs of ``tensorflow-serving-api`` and converts JSON values to
``TensorProto`` by hand (no ``tf.make_tensor_proto``, no numpy). Those protos import modules of the
``tensorflow`` package; :func:`tfstack.serving.protos.load_serving_protos` loads them without
starting TensorFlow's runtime (0.3 s instead of 3-4 s), and only when gRPC is used. Tensors and
the REST JSON <-> gRPC translation live in :mod:`tfstack.serving.tensors`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import requests
from google.protobuf import json_format, text_format

from tfstack.core.modelstatus import VersionState, parse_version_status
from tfstack.errors import StackError, UsageError
from tfstack.serving.protos import load_serving_protos
from tfstack.serving.tensors import (
    Tensor,
    from_tensor_proto,
    grpc_outputs_to_rest,
    rest_body_to_grpc,
    signature_inputs,
    to_tensor_proto,
)

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
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        verify: str | bool = True,
    ) -> None:
        """``headers`` go with every request (the door's ``Authorization``); ``verify`` is the
        CA file an https URL's certificate is checked with (True: the system's CAs)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.session.headers.update(headers or {})
        self.session.verify = verify

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

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        root_certificates: bytes | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A TLS channel checked against ``root_certificates`` (PEM) when given, else plain text;
        ``metadata`` (the door's ``authorization``) goes with every call."""
        # Every proto and stub the methods import, loaded once without TensorFlow's runtime.
        load_serving_protos()
        self.target = target
        self.timeout = timeout
        self._metadata = tuple(metadata)
        options = [
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ("grpc.enable_http_proxy", 0),
        ]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
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
            return method(
                request,
                timeout=timeout if timeout is not None else self.timeout,
                metadata=self._metadata or None,
            )
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
