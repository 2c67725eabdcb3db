"""gRPC PredictionService and ModelService on a synchronous ``grpc.server`` with
tensorflow-serving-api's stubs: a thin adapter of :mod:`modelserver.dataplane`.

Each call runs start to finish in one of the gRPC server's worker threads (no event loop hop, no
second pool): on one core the synchronous server answers about twice as many unary calls as
``grpc.aio`` (echo, measured here: ~4,900 vs ~2,500 req/s), and TensorFlow releases the GIL while
it runs. There are enough threads for server-side batching to fill its batches (a batching predict
blocks its thread until the batch runs). Errors are TF status codes with upstream's message texts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from modelserver import config as config_module
from modelserver import inference
from modelserver.dataplane import DataPlane
from modelserver.errors import Code, ServingError, as_serving_error, bounded
from modelserver.metrics import Metrics
from modelserver.servable import Servable

T = TypeVar("T")

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

# Largest message the server accepts or sends (upstream: kint32max).
MAX_MESSAGE_BYTES = 2**31 - 1
RELOAD_MAX_WAIT_SECONDS = 120.0
"""The longest a HandleReloadConfigRequest waits for new models (when the client's deadline is
later or absent); past it the call answers DEADLINE_EXCEEDED and the config stays applied."""
RELOAD_DEADLINE_MARGIN = 0.25
"""Seconds before the client's deadline the call answers, so the answer arrives in time."""


class Services(
    prediction_service_pb2_grpc.PredictionServiceServicer,  # type: ignore[misc]
    model_service_pb2_grpc.ModelServiceServicer,  # type: ignore[misc]
):
    """Both services; ``reload`` applies a ModelServerConfig (blocking)."""

    def __init__(
        self,
        plane: DataPlane,
        metrics: Metrics,
        reload: Callable[[Any, float | None], None],
        *,
        tensor_content: bool = False,
    ) -> None:
        self.plane = plane
        self.metrics = metrics
        self._reload = reload
        # Outputs in typed fields unless --enable_serialization_as_tensor_content (upstream).
        self._tensor_content = tensor_content

    def _call(self, context: Any, api: str, model: str, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = work()
        except Exception as exc:
            self._abort(context, api, model, exc, started)
        self.metrics.record_request(model, api, "GRPC", "OK", (time.perf_counter() - started) * 1e6)
        return result

    def _abort(
        self, context: Any, api: str, model: str, exc: Exception, started: float
    ) -> NoReturn:
        error = as_serving_error(exc) or ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        self.metrics.record_request(
            model, api, "GRPC", error.code.name, (time.perf_counter() - started) * 1e6
        )
        context.abort(_GRPC_CODES[int(error.code)], bounded(error.message))
        raise AssertionError("unreachable") from None

    def _inference(
        self, request: Any, response: Any, run: Callable[[Servable, Any, Any], None]
    ) -> Callable[[], Any]:
        def work() -> Any:
            with self.plane.serving(request.model_spec) as servable:
                run(servable, request, response)
            return response

        return work

    def Predict(self, request: Any, context: Any) -> Any:
        work = self._inference(request, predict_pb2.PredictResponse(), self._run_predict)
        return self._call(context, "predict", request.model_spec.name, work)

    def _run_predict(self, servable: Servable, request: Any, response: Any) -> None:
        inference.run_predict(
            servable, request, response, self.plane.predict, as_content=self._tensor_content
        )

    def Classify(self, request: Any, context: Any) -> Any:
        work = self._inference(
            request, classification_pb2.ClassificationResponse(), inference.run_classify
        )
        return self._call(context, "classify", request.model_spec.name, work)

    def Regress(self, request: Any, context: Any) -> Any:
        work = self._inference(request, regression_pb2.RegressionResponse(), inference.run_regress)
        return self._call(context, "regress", request.model_spec.name, work)

    def MultiInference(self, request: Any, context: Any) -> Any:
        if not request.tasks:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "MultiInferenceRequest must contain at least one task.",
            )
        spec = request.tasks[0].model_spec

        def work() -> Any:
            response = inference_pb2.MultiInferenceResponse()
            with self.plane.serving(spec) as servable:
                inference.run_multi_inference(servable, request, response)
            return response

        return self._call(context, "multi_inference", spec.name, work)

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        return self._call(
            context,
            "get_model_metadata",
            request.model_spec.name,
            lambda: self.plane.model_metadata(request.model_spec, request.metadata_field),
        )

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        return self._call(
            context,
            "get_model_status",
            request.model_spec.name,
            lambda: self.plane.model_status(request.model_spec),
        )

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        # Answer before the client's deadline (and never later than RELOAD_MAX_WAIT_SECONDS):
        # a model with no loadable version must not hold this worker thread forever.
        timeout = max(
            0.0, min(context.time_remaining() - RELOAD_DEADLINE_MARGIN, RELOAD_MAX_WAIT_SECONDS)
        )

        def work() -> Any:
            config_module.model_configs(request.config)  # refuse anything but model_config_list
            self._reload(request.config, timeout)
            return model_management_pb2.ReloadConfigResponse()

        return self._call(context, "reload_config", "", work)


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


THREADS = 16
"""Worker threads of the gRPC server unless ``--grpc_max_threads`` says otherwise: enough to keep
one core busy; more only add GIL contention (measured: 64 threads answer half as many calls)."""
BATCHING_THREADS = 64
"""With server-side batching a predict blocks its thread until its batch runs: as many threads as
calls that may wait together (the largest batches)."""


def build_server(
    services: Services,
    extra_options: list[tuple[str, Any]],
    max_threads: int = 0,
    *,
    batching: bool = False,
) -> Any:
    """A synchronous gRPC server with both services (not started)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *extra_options,
    ]
    threads = max_threads if max_threads > 0 else BATCHING_THREADS if batching else THREADS
    workers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc")
    server = grpc.server(workers, options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    return server
