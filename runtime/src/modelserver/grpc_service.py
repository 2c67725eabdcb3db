"""gRPC PredictionService and ModelService on ``grpc.aio`` with tensorflow-serving-api's stubs.

Handlers run in the server's event loop; every TensorFlow call and every blocking manager call goes
to the inference thread pool. Errors are TF status codes with upstream's message texts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from typing import Any, NoReturn, TypeVar

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from modelserver import config as config_module
from modelserver import inference
from modelserver.dispatch import InlinePolicy
from modelserver.manager import ModelManager, VersionRecord
from modelserver.metrics import Metrics
from modelserver.servable import Servable
from modelserver.status import Code, ServingError, as_serving_error, invalid_argument

T = TypeVar("T")

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

# Largest message the server accepts or sends (upstream: kint32max).
MAX_MESSAGE_BYTES = 2**31 - 1


def resolve_spec(manager: ModelManager, spec: Any) -> Servable:
    """The servable a ModelSpec addresses: version, label, or latest."""
    kind = spec.WhichOneof("version_choice")
    if kind == "version":
        return manager.resolve(spec.name, version=spec.version.value)
    if kind == "version_label":
        return manager.resolve(spec.name, label=spec.version_label)
    return manager.resolve(spec.name)


def serving_spec(manager: ModelManager, spec: Any) -> AbstractContextManager[Servable]:
    """Hold the servable a ModelSpec addresses for one request."""
    kind = spec.WhichOneof("version_choice")
    if kind == "version":
        return manager.serving(spec.name, version=spec.version.value)
    if kind == "version_label":
        return manager.serving(spec.name, label=spec.version_label)
    return manager.serving(spec.name)


def fill_status(response: Any, records: list[VersionRecord]) -> None:
    for record in records:
        entry = response.model_version_status.add()
        entry.version = record.version
        entry.state = int(record.state)
        entry.status.SetInParent()
        if record.error is not None:
            entry.status.error_code = int(record.error.code)
            entry.status.error_message = record.error.message


def model_status(manager: ModelManager, spec: Any) -> Any:
    """GetModelStatusResponse for a ModelSpec (shared with REST)."""
    if not spec.name:
        raise invalid_argument("Missing model name in request.")
    kind = spec.WhichOneof("version_choice")
    version: int | None = None
    if kind == "version":
        version = spec.version.value
    elif kind == "version_label":
        version = manager.label_version(spec.name, spec.version_label)
    response = get_model_status_pb2.GetModelStatusResponse()
    fill_status(response, manager.status(spec.name, version))
    return response


def model_metadata(manager: ModelManager, request: Any) -> Any:
    """GetModelMetadataResponse (only the ``signature_def`` field exists upstream)."""
    if not request.metadata_field:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != "signature_def":
            raise invalid_argument(f"Metadata field {field} is not supported")
    servable = resolve_spec(manager, request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    inference.fill_model_spec(response.model_spec, servable, None)
    response.metadata["signature_def"].Pack(servable.signature_def_map())
    return response


class Services(
    prediction_service_pb2_grpc.PredictionServiceServicer,  # type: ignore[misc]
    model_service_pb2_grpc.ModelServiceServicer,  # type: ignore[misc]
):
    """Both services; ``reload`` applies a ModelServerConfig (blocking, run in the pool)."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        metrics: Metrics,
        reload: Callable[[Any], None],
        *,
        predict: Callable[[Servable, Any, Any], None] | None = None,
        inline: InlinePolicy | None = None,
    ) -> None:
        self.manager = manager
        self.executor = executor
        self.metrics = metrics
        self._reload = reload
        self._predict = predict or inference.run_predict
        # A batching predict waits for other requests: it must never run on the event loop.
        self.inline = inline if inline is not None else InlinePolicy()
        if predict is not None:
            self.inline.enabled = False

    async def _call(self, context: Any, api: str, model: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.executor, work)
        except Exception as exc:
            await self._abort(context, api, model, exc, started)
        self.metrics.record_request(model, api, "GRPC", "OK", (time.perf_counter() - started) * 1e6)
        return result

    async def _abort(
        self, context: Any, api: str, model: str, exc: Exception, started: float
    ) -> NoReturn:
        error = as_serving_error(exc) or ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.metrics.record_request(
            model, api, "GRPC", error.code.name, (time.perf_counter() - started) * 1e6
        )
        await context.abort(_GRPC_CODES[int(error.code)], error.message)
        raise AssertionError("unreachable") from None

    def _inference(
        self, request: Any, response: Any, run: Callable[[Servable, Any, Any], None]
    ) -> Callable[[], Any]:
        def work() -> Any:
            with serving_spec(self.manager, request.model_spec) as servable:
                run(servable, request, response)
            return response

        return work

    async def Predict(self, request: Any, context: Any) -> Any:
        work = self._inference(request, predict_pb2.PredictResponse(), self._predict)
        model = request.model_spec.name
        key = ("predict", model)
        if self.inline.enabled and self.inline.inline(key, request.ByteSize()):
            started = time.perf_counter()
            try:
                result = self.inline.run_inline(key, work)
            except Exception as exc:
                await self._abort(context, "predict", model, exc, started)
            self.metrics.record_request(
                model, "predict", "GRPC", "OK", (time.perf_counter() - started) * 1e6
            )
            return result
        return await self._call(context, "predict", model, self.inline.timed(key, work))

    async def Classify(self, request: Any, context: Any) -> Any:
        work = self._inference(
            request, classification_pb2.ClassificationResponse(), inference.run_classify
        )
        return await self._call(context, "classify", request.model_spec.name, work)

    async def Regress(self, request: Any, context: Any) -> Any:
        work = self._inference(request, regression_pb2.RegressionResponse(), inference.run_regress)
        return await self._call(context, "regress", request.model_spec.name, work)

    async def MultiInference(self, request: Any, context: Any) -> Any:
        if not request.tasks:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "MultiInferenceRequest must contain at least one task.",
            )
        spec = request.tasks[0].model_spec

        def work() -> Any:
            response = inference_pb2.MultiInferenceResponse()
            with serving_spec(self.manager, spec) as servable:
                inference.run_multi_inference(servable, request, response)
            return response

        return await self._call(context, "multi_inference", spec.name, work)

    async def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return await self._call(
            context,
            "get_model_metadata",
            request.model_spec.name,
            lambda: model_metadata(self.manager, request),
        )

    async def GetModelStatus(self, request: Any, context: Any) -> Any:
        return await self._call(
            context,
            "get_model_status",
            request.model_spec.name,
            lambda: model_status(self.manager, request.model_spec),
        )

    async def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            config_module.model_configs(request.config)  # refuse anything but model_config_list
            self._reload(request.config)
            return model_management_pb2.ReloadConfigResponse()

        return await self._call(context, "reload_config", "", work)


def channel_arguments(text: str) -> list[tuple[str, Any]]:
    """``--grpc_channel_arguments=key=value,key2=value2`` (integers where they parse)."""
    result: list[tuple[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            result.append((key.strip(), int(value)))
        except ValueError:
            result.append((key.strip(), value.strip()))
    return result


def build_server(services: Services, extra_options: list[tuple[str, Any]]) -> Any:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *extra_options,
    ]
    server = grpc.aio.server(options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    return server
