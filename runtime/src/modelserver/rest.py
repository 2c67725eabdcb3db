"""The REST API of contract section 5, served by :mod:`modelserver.httpserver`: a thin adapter of
:mod:`modelserver.dataplane` (each URL becomes the ModelSpec gRPC would send).

Routing follows upstream's two regular expressions; anything else under ``/v1/`` is
``Malformed request: <METHOD> <path>`` (400) and paths outside ``/v1/`` get a plain 404, except the
Prometheus path when monitoring is on. Bodies are read up to a size limit (413 beyond it). The
whole request (JSON decode, inference, JSON encode) runs in one place: inline on the event loop
when :class:`~modelserver.dispatch.InlinePolicy` knows the handler is cheap (tiny models, small
bodies, no batching), otherwise in the inference thread pool, one hop.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from modelserver import codec
from modelserver.dataplane import SIGNATURE_DEF_FIELD, DataPlane
from modelserver.dispatch import InlinePolicy
from modelserver.errors import (
    Code,
    ServingError,
    as_serving_error,
    bounded,
    invalid_argument,
    shown,
)
from modelserver.metrics import Metrics
from modelserver.readiness import READY_PATH, ready_answer
from modelserver.servable import DEFAULT_SIGNATURE

PREDICTION_API = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_API = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
V1 = re.compile(r"(?i)/v1/.*", re.DOTALL)

JSON = b"application/json"
METRICS_TYPE = b"text/plain; version=0.0.4"
HTML = b"text/html"
INFERENCE_APIS = frozenset({"predict", "classify", "regress"})
Answer = tuple[int, bytes, bytes]
"""(HTTP status, content type, body)."""
NOT_FOUND_BODY = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"</BODY></HTML>\n"
)
INT64_MAX = (1 << 63) - 1


def _json(message: Any) -> bytes:
    text = json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=2,
    )
    return str(text).encode("utf-8")


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value > INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {shown(text)} to numeric.")
    return value


def model_spec(model: str, version_text: str | None, label: str | None) -> Any:
    """The ModelSpec a URL addresses (a label, a version, or the latest)."""
    spec = model_pb2.ModelSpec(name=model)
    if label is not None:
        spec.version_label = label
    elif version_text:
        spec.version.value = _version(version_text) or 0
    return spec


class RestApi:
    """REST requests as :class:`~modelserver.httpserver.HttpServer` hands them over."""

    def __init__(
        self,
        plane: DataPlane,
        executor: Executor,
        metrics: Metrics,
        *,
        metrics_path: str | None = None,
        max_body_bytes: int = 256 << 20,
        timeout_seconds: float = 30.0,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.plane = plane
        self.executor = executor
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.max_body_bytes = max_body_bytes
        self.limits = codec.Limits(max_body_bytes=max_body_bytes)
        self.timeout = timeout_seconds if timeout_seconds > 0 else None
        # A batching Predict waits for other requests: it must never run on the event loop.
        self.inline = inline if inline is not None else InlinePolicy()
        if plane.batching:
            self.inline.enabled = False

    # -- HTTP entry (modelserver.httpserver) ------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> Answer | Awaitable[Answer]:
        """One request: an answer right away (routing errors, cheap inline handlers) or a
        coroutine for work in the pool."""
        if self.metrics_path is not None and path == self.metrics_path and method == "GET":
            return 200, METRICS_TYPE, self.metrics.render().encode("utf-8")
        if path == READY_PATH and method == "GET":
            return ready_answer(self.plane.manager)
        if not V1.fullmatch(path):
            return 404, HTML, NOT_FOUND_BODY
        started = time.perf_counter()
        model = ""
        api = "unknown"
        try:
            api, model, work = self._route(method, path, body)
            if api in INFERENCE_APIS and self.inline.inline((api, model), len(body)):
                payload = self.inline.run_inline((api, model), work)
            else:
                return self._pooled(api, model, work, started)
        except Exception as exc:
            return self._failed(exc, api, model, started)
        if model:
            self.metrics.record_request(
                model, api, "REST", "OK", (time.perf_counter() - started) * 1e6
            )
        return 200, JSON, payload

    async def _pooled(
        self, api: str, model: str, work: Callable[[], bytes], started: float
    ) -> Answer:
        if api in INFERENCE_APIS:
            work = self.inline.timed((api, model), work)
        try:
            payload = await self._in_pool(work)
        except Exception as exc:
            return self._failed(exc, api, model, started)
        if model:
            self.metrics.record_request(
                model, api, "REST", "OK", (time.perf_counter() - started) * 1e6
            )
        return 200, JSON, payload

    def _failed(self, exc: Exception, api: str, model: str, started: float) -> Answer:
        error = as_serving_error(exc) or ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        if model:
            self.metrics.record_request(
                model, api, "REST", error.code.name, (time.perf_counter() - started) * 1e6
            )
        return error.http_status, JSON, _error_body(bounded(error.message))

    def too_large(self, size: int, limit: int) -> Answer:
        error = _too_large(size, limit)
        return error.http_status, JSON, _error_body(error.message)

    def refuse(self, status: int, message: str) -> Answer:
        """A protocol-level refusal (408, 413, 415, 431, bad gzip) with the usual JSON body."""
        return status, JSON, _error_body(message)

    # -- routing -------------------------------------------------------------------------------
    def _route(self, method: str, path: str, body: bytes) -> tuple[str, str, Callable[[], bytes]]:
        """(api, model, work) for a request under /v1/; INVALID_ARGUMENT for anything else."""
        if method == "POST" and (match := PREDICTION_API.fullmatch(path)):
            model, version_text, label, verb = match.groups()
            api = verb.lower()
            handler = {
                "predict": self._predict,
                "classify": self._classify,
                "regress": self._regress,
            }[api]
            return api, model, _bind(handler, model, version_text, label, body)
        if method == "GET" and (match := STATUS_API.fullmatch(path)):
            model, version_text, label, sub = match.groups()
            model = model or ""
            if sub is not None and sub.lower() == "metadata":
                return (
                    "get_model_metadata",
                    model,
                    _bind(self._metadata, model, version_text, label, body),
                )
            return "get_model_status", model, _bind(self._status, model, version_text, label, body)
        raise invalid_argument(f"Malformed request: {method} {shown(path)}")

    async def _in_pool(self, work: Callable[[], bytes]) -> bytes:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, work)
        if self.timeout is None:
            return await future
        expired: list[bool] = []
        handle = loop.call_later(self.timeout, _expire, future, expired)
        try:
            return await future
        except asyncio.CancelledError:
            if not expired:
                raise
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"Request timed out after {self.timeout * 1000:.0f} ms (--rest_api_timeout_in_ms)",
            ) from None
        finally:
            handle.cancel()

    # -- handlers (run in the thread pool) -----------------------------------------------------
    def _predict(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_predict_request(body, self.limits)
        with self.plane.serving(model_spec(model, version, label)) as servable:
            signature_name = request.signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(signature_name)
            if signature is None:
                raise invalid_argument(
                    f'Serving signature name: "{shown(signature_name)}" not found in signature def'
                )
            specs = servable.cache.get(("rest-specs", signature_name))
            if specs is None:
                specs = {
                    alias: codec.TensorSpec.from_tensor_info(info)
                    for alias, info in signature.inputs.items()
                }
                servable.cache[("rest-specs", signature_name)] = specs
            decoded = codec.decode_predict_inputs(request, specs, self.limits)
            outputs = self.plane.predict(servable, signature_name, decoded.tensors)
        return codec.encode_predict_response(outputs, decoded.format)

    def _classify(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_examples_request(body, self.limits)
        with self.plane.serving(model_spec(model, version, label)) as servable:
            found = servable.classify(request.signature_name, request.examples)
        return codec.encode_classify_response(found)

    def _regress(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_examples_request(body, self.limits)
        with self.plane.serving(model_spec(model, version, label)) as servable:
            values = servable.regress(request.signature_name, request.examples)
        return codec.encode_regress_response(values)

    def _status(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        return _json(self.plane.model_status(model_spec(model, version, label)))

    def _metadata(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        if not model:
            raise invalid_argument("Missing model name in request.")
        spec = model_spec(model, version, label)
        return metadata_json(self.plane.model_metadata(spec, [SIGNATURE_DEF_FIELD]))


def metadata_json(response: Any) -> bytes:
    """``{"model_spec": {...}, "metadata": {"signature_def": <SignatureDefMap>}}`` as upstream
    prints a GetModelMetadataResponse."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures)
    spec_json = _json(response.model_spec).decode("utf-8")
    signatures_json = _json(signatures).decode("utf-8")
    text = (
        '{\n"model_spec":'
        + spec_json
        + ',\n"metadata": {"signature_def": '
        + signatures_json
        + "\n}\n}\n"
    )
    return text.encode("utf-8")


def _expire(future: asyncio.Future[bytes], expired: list[bool]) -> None:
    if not future.done():
        expired.append(True)
        future.cancel()


def _bind(
    handler: Callable[[str, str | None, str | None, bytes], bytes],
    model: str,
    version: str | None,
    label: str | None,
    body: bytes,
) -> Callable[[], bytes]:
    return lambda: handler(model, version, label, body)


def _error_body(message: str) -> bytes:
    return codec.error_body(message)


class BodyTooLarge(ServingError):
    """A request body over the limit: HTTP 413 with the usual JSON error body."""

    @property
    def http_status(self) -> int:
        return 413


def _too_large(size: int, limit: int) -> ServingError:
    return BodyTooLarge(
        Code.RESOURCE_EXHAUSTED,
        f"Request body of {size} bytes exceeds the limit of {limit} bytes"
        " (--rest_api_max_body_bytes); send fewer instances per request",
    )
