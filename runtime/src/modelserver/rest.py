"""The REST API of contract section 5, served by :mod:`modelserver.httpserver` (also an ASGI app).

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
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any

from google.protobuf import json_format

from modelserver import codec
from modelserver.dispatch import InlinePolicy
from modelserver.grpc_service import model_status
from modelserver.manager import ModelManager
from modelserver.metrics import Metrics
from modelserver.servable import DEFAULT_SIGNATURE, Servable
from modelserver.status import Code, ServingError, as_serving_error, invalid_argument

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PREDICTION_API = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_API = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
V1 = re.compile(r"(?i)/v1/.*", re.DOTALL)

JSON = b"application/json"
JSON_HEADERS = [(b"content-type", JSON)]
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

Predictor = Callable[[Servable, str, dict[str, Any]], dict[str, Any]]


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
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


class RestApi:
    """The ASGI callable. ``predictor`` defaults to a direct servable call (batching swaps it)."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        metrics: Metrics,
        *,
        metrics_path: str | None = None,
        max_body_bytes: int = 256 << 20,
        timeout_seconds: float = 30.0,
        predictor: Predictor | None = None,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.manager = manager
        self.executor = executor
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.max_body_bytes = max_body_bytes
        self.limits = codec.Limits(max_body_bytes=max_body_bytes)
        self.timeout = timeout_seconds if timeout_seconds > 0 else None
        self.predictor: Predictor = predictor or (
            lambda servable, signature, tensors: servable.predict(signature, tensors)
        )
        # A batching predictor waits for other requests: it must never run on the event loop.
        self.inline = inline if inline is not None else InlinePolicy()
        if predictor is not None:
            self.inline.enabled = False

    # -- HTTP entry (modelserver.httpserver) ------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> Answer | Awaitable[Answer]:
        """One request: an answer right away (routing errors, cheap inline handlers) or a
        coroutine for work in the pool."""
        if self.metrics_path is not None and path == self.metrics_path and method == "GET":
            return 200, METRICS_TYPE, self.metrics.render().encode("utf-8")
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
        return error.http_status, JSON, _error_body(error.message)

    def too_large(self, size: int, limit: int) -> Answer:
        error = _too_large(size, limit)
        return error.http_status, JSON, _error_body(error.message)

    def refuse(self, status: int, message: str) -> Answer:
        """A protocol-level refusal (408, 413, 415, 431, bad gzip) with the usual JSON body."""
        return status, JSON, _error_body(message)

    # -- ASGI entry --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if self.metrics_path is not None and path == self.metrics_path and method == "GET":
            body = self.metrics.render().encode("utf-8")
            await _respond(send, 200, body, [(b"content-type", b"text/plain; version=0.0.4")])
            return
        if not V1.fullmatch(path):
            await _respond(send, 404, NOT_FOUND_BODY, [(b"content-type", b"text/html")])
            return
        body_or_error = await self._read_body(scope, receive)
        if isinstance(body_or_error, ServingError):
            await _respond(
                send, body_or_error.http_status, _error_body(body_or_error.message), JSON_HEADERS
            )
            return
        answer = self.handle(method, path, body_or_error)
        status, content_type, payload = answer if isinstance(answer, tuple) else await answer
        await _respond(send, status, payload, [(b"content-type", content_type)])

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | ServingError:
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return invalid_argument("Malformed Content-Length header")
                if declared > limit:
                    return _too_large(declared, limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ServingError(Code.CANCELLED, "Client disconnected")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return _too_large(size, limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
        raise invalid_argument(f"Malformed request: {method} {path}")

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

    def _resolve(self, model: str, version_text: str | None, label: str | None) -> Servable:
        version = _version(version_text)
        if label is not None:
            return self.manager.resolve(model, label=label)
        return self.manager.resolve(model, version=version)

    def _serving(
        self, model: str, version_text: str | None, label: str | None
    ) -> AbstractContextManager[Servable]:
        version = None if label is not None else _version(version_text)
        return self.manager.serving(model, version=version, label=label)

    # -- handlers (run in the thread pool) -----------------------------------------------------
    def _predict(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_predict_request(body, self.limits)
        with self._serving(model, version, label) as servable:
            signature_name = request.signature_name or DEFAULT_SIGNATURE
            signature = servable.signatures.get(signature_name)
            if signature is None:
                raise invalid_argument(
                    f'Serving signature name: "{signature_name}" not found in signature def'
                )
            specs = servable.cache.get(("rest-specs", signature_name))
            if specs is None:
                specs = {
                    alias: codec.TensorSpec.from_tensor_info(info)
                    for alias, info in signature.inputs.items()
                }
                servable.cache[("rest-specs", signature_name)] = specs
            decoded = codec.decode_predict_inputs(request, specs, self.limits)
            outputs = self.predictor(servable, signature_name, decoded.tensors)
        return codec.encode_predict_response(outputs, decoded.format)

    def _classify(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_examples_request(body, self.limits)
        with self._serving(model, version, label) as servable:
            found = servable.classify(request.signature_name, request.examples)
        return codec.encode_classify_response(found)

    def _regress(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        request = codec.parse_examples_request(body, self.limits)
        with self._serving(model, version, label) as servable:
            values = servable.regress(request.signature_name, request.examples)
        return codec.encode_regress_response(values)

    def _status(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        from tensorflow_serving.apis import model_pb2

        spec = model_pb2.ModelSpec(name=model)
        if label is not None:
            spec.version_label = label
        elif version is not None:
            spec.version.value = _version(version) or 0
        return _json(model_status(self.manager, spec))

    def _metadata(self, model: str, version: str | None, label: str | None, body: bytes) -> bytes:
        if not model:
            raise invalid_argument("Missing model name in request.")
        servable = self._resolve(model, version, label)
        return metadata_json(servable)


def metadata_json(servable: Servable) -> bytes:
    """``{"model_spec": {...}, "metadata": {"signature_def": <SignatureDefMap>}}`` as upstream."""
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=servable.name)
    spec.version.value = servable.version
    spec_json = _json(spec).decode("utf-8")
    signatures_json = _json(servable.signature_def_map()).decode("utf-8")
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


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
