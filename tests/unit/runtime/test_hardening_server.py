"""Hostile input that targets server state (issue #10): metric series for model names a client
invents, and a reload naming a model with nothing loadable (it must answer within its deadline)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from modelserver.metrics import MAX_LABEL_CHARS, Metrics

from .conftest import ModelFiles, RunningServer

METRICS_PATH = "/monitoring/prometheus/metrics"


def _monitored(models: ModelFiles, tmp_path: Path, server_factory: Any) -> RunningServer:
    models.place(tmp_path / "hp", 1)
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}')
    server: RunningServer = server_factory(
        "--model_name=hp",
        f"--model_base_path={tmp_path / 'hp'}",
        "--rest_api_port=0",
        f"--monitoring_config_file={monitoring}",
    )
    return server


def test_unknown_model_names_create_no_series(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """Hundreds of invented names (REST and a 50 KB gRPC name) leave the metrics page as it was;
    the configured model still gets its series."""
    server = _monitored(models, tmp_path, server_factory)
    status, _ = server.request("POST", "/v1/models/hp:predict", '{"instances": [1.0]}')
    assert status == 200
    before = server.request("GET", METRICS_PATH)[1]
    assert b'model_name="hp"' in before
    for index in range(300):
        status, _ = server.request("POST", f"/v1/models/nope{index}:predict", '{"instances": [1]}')
        assert status == 404
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "n" * 50_000
    # The answer is an error (NOT_FOUND echoing the name; the client may see it as
    # RESOURCE_EXHAUSTED since the message exceeds its 16 KB metadata limit): what matters here
    # is that the name leaves no series behind.
    with pytest.raises(grpc.RpcError):
        stub.Predict(request, timeout=10)
    after = server.request("GET", METRICS_PATH)[1]
    assert after == before
    assert b"nope" not in after


def test_metrics_bound_label_values_and_model_count() -> None:
    """Known models are admitted up to the length and count bounds; load paths are truncated."""
    metrics = Metrics(known_model=lambda name: name.startswith("m"))
    metrics.record_request("m" * (MAX_LABEL_CHARS + 1), "predict", "REST", "OK", 10)
    metrics.record_request("other", "predict", "REST", "OK", 10)
    metrics.record_request("", "reload_config", "GRPC", "OK", 10)
    metrics.record_request("m1", "predict", "REST", "OK", 10)
    metrics.record_load("/" + "p" * 10_000, True, 5)
    text = metrics.render()
    assert 'model_name="m1"' in text
    assert "other" not in text
    assert "m" * (MAX_LABEL_CHARS + 1) not in text
    assert 'model_name=""' not in text
    assert max(len(line) for line in text.splitlines()) < 2 * MAX_LABEL_CHARS


def test_reload_naming_an_empty_base_path_answers_within_the_deadline(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """A reload adding a model with no version answers DEADLINE_EXCEEDED from the server before
    the client's deadline, naming the model and base path; the old model keeps serving and a
    later reload still works (no worker thread is held)."""
    models.place(tmp_path / "a", 1)
    (tmp_path / "empty").mkdir()
    server: RunningServer = server_factory(
        "--model_name=a", f"--model_base_path={tmp_path / 'a'}", "--rest_api_port=0"
    )
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)

    def config(*entries: tuple[str, Path]) -> Any:
        request = model_management_pb2.ReloadConfigRequest()
        for name, base in entries:
            entry = request.config.model_config_list.config.add()
            entry.name = name
            entry.base_path = str(base)
            entry.model_platform = "tensorflow"
        return request

    for _ in range(3):  # more than once: no call may stay stuck in a worker
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.HandleReloadConfigRequest(
                config(("a", tmp_path / "a"), ("c", tmp_path / "empty")), timeout=2
            )
        took = time.monotonic() - started
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        details = raised.value.details() or ""
        assert f"model c (base path {tmp_path / 'empty'}) has no AVAILABLE version" in details
        assert took < 2.2
        status, body = server.request("POST", "/v1/models/a:predict", '{"instances": [2.0]}')
        assert (status, json.loads(body)) == (200, {"predictions": [3.0]})
        stub.HandleReloadConfigRequest(config(("a", tmp_path / "a")), timeout=30)
