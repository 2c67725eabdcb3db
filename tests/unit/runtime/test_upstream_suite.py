"""Upstream's server test suite, case by case, against the in-process server.

tensorflow/serving at 9d981c5c, ``tensorflow_serving/model_servers/tensorflow_model_server_test.py``
has 30 cases. Six do not apply to this server (two TF Lite, the profiler, TF Text and two Keras-3
naming cases); the 24 others are reproduced here with the same requests, the same expected values
and upstream's own test models (``tests/fixtures/upstream_models``, Apache-2.0, versions in
``00000123`` directories). Every server is started with the flags upstream's test base passes:
``--rest_api_timeout_in_ms=5000 --grpc_socket_path=... --grpc_channel_arguments=...``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from .conftest import RunningServer, start_server

UPSTREAM = Path(__file__).resolve().parents[2] / "fixtures" / "upstream_models"
HALF_PLUS_TWO = UPSTREAM / "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2 = UPSTREAM / "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_THREE = UPSTREAM / "saved_model_half_plus_three"
RPC_TIMEOUT = 20.0

Starter = Callable[..., RunningServer]


@pytest.fixture
def upstream_server(tmp_path: Path) -> Iterator[Starter]:
    """Start servers the way upstream's RunServer does; all stopped after the test."""
    started: list[RunningServer] = []

    def start(
        model_name: str | None = None,
        model_path: Path | None = None,
        *,
        model_config_file: Path | None = None,
        monitoring_config_file: Path | None = None,
        grpc_channel_arguments: str = "",
        model_config_file_poll_period: int | None = None,
    ) -> RunningServer:
        args = [
            "--rest_api_timeout_in_ms=5000",
            f"--grpc_socket_path={tmp_path / 'tf-serving.sock'}",
        ]
        if model_config_file is not None:
            args.append(f"--model_config_file={model_config_file}")
        else:
            args += [f"--model_name={model_name}", f"--model_base_path={model_path}"]
        if monitoring_config_file is not None:
            args.append(f"--monitoring_config_file={monitoring_config_file}")
        if model_config_file_poll_period is not None:
            args.append(f"--model_config_file_poll_wait_seconds={model_config_file_poll_period}")
        channel_args = ",".join(a for a in (grpc_channel_arguments, "grpc.so_reuseaddr=1") if a)
        args.append(f"--grpc_channel_arguments={channel_args}")
        server = start_server(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def model_version(model_path: Path) -> int:
    """Upstream's _GetModelVersion: the one numeric directory's name as an int."""
    return int(next(p.name for p in model_path.iterdir() if p.name.isdigit()))


def verify_model_spec(spec: Any, name: str, signature_name: str, version: int) -> None:
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature_name, version)


def verify_predict(
    channel: grpc.Channel,
    expected_output: float,
    expected_version: int,
    *,
    model_name: str = "default",
    specify_output: bool = True,
    signature_name: str = "serving_default",
) -> None:
    """Upstream's VerifyPredictRequest: x = [2.0] (shape [1]); y read from float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result = stub.Predict(request, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected_output]
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)


def call_rest(server: RunningServer, path: str, document: Any = None) -> Any:
    """Upstream's CallREST (one attempt: the in-process server is ready when started)."""
    data = json.dumps(document).encode() if document is not None else None
    url = f"http://127.0.0.1:{server.rest_port}{path}"
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        return response.read()


def sorted_object(value: Any) -> Any:
    """Upstream's SortedObject: nested lists and dicts in a canonical order."""
    if isinstance(value, dict):
        return sorted((k, sorted_object(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sorted(sorted_object(v) for v in value)
    return value


def write_good_config(tmp_path: Path) -> Path:
    template = (UPSTREAM / "good_model_config.txt").read_text()
    text = template.replace("${TEST_HALF_PLUS_TWO_DIR}", str(HALF_PLUS_TWO))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(HALF_PLUS_THREE))
    path = tmp_path / "good_model_config.conf"
    path.write_text(text)
    return path


def single_model_config(name: str, path: Path) -> str:
    return (
        f'model_config_list: {{ config: {{ name: "{name}", base_path: "{path}", '
        'model_platform: "tensorflow" } }'
    )


def test_get_model_status(upstream_server: Starter) -> None:
    """testGetModelStatus: the 00000123 model reports version 123, OK."""
    server = upstream_server("default", HALF_PLUS_TWO)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(
        request, RPC_TIMEOUT
    )
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(upstream_server: Starter) -> None:
    """testGetModelMetadata: name, version 123 and one signature_def metadata entry."""
    server = upstream_server("default", HALF_PLUS_TWO)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    result = stub.GetModelMetadata(request, RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == model_version(HALF_PLUS_TWO)
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("model_path", [HALF_PLUS_TWO, HALF_PLUS_TWO_TF2], ids=["tf1", "tf2"])
def test_classify(upstream_server: Starter, model_path: Path) -> None:
    """testClassify / testClassifyTf2: x=2 scores 3.0 via classify_x_to_y."""
    server = upstream_server("default", model_path)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    result = stub.Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, "default", "classify_x_to_y", model_version(model_path))


@pytest.mark.parametrize("model_path", [HALF_PLUS_TWO, HALF_PLUS_TWO_TF2], ids=["tf1", "tf2"])
def test_regress(upstream_server: Starter, model_path: Path) -> None:
    """testRegress / testRegressTf2: x=2 regresses to 3.0 via regress_x_to_y."""
    server = upstream_server("default", model_path)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    result = stub.Regress(request, RPC_TIMEOUT)
    assert [r.value for r in result.result.regressions] == [3.0]
    verify_model_spec(result.model_spec, "default", "regress_x_to_y", model_version(model_path))


@pytest.mark.parametrize("model_path", [HALF_PLUS_TWO, HALF_PLUS_TWO_TF2], ids=["tf1", "tf2"])
def test_multi_inference(upstream_server: Starter, model_path: Path) -> None:
    """testMultiInference / testMultiInferenceTf2: regress and classify in one call, both 3.0."""
    server = upstream_server("default", model_path)
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    result = stub.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for index in range(2):
        verify_model_spec(
            result.results[index].model_spec,
            "default",
            request.tasks[index].model_spec.signature_name,
            model_version(model_path),
        )


def test_predict_saved_model(upstream_server: Starter) -> None:
    """testPredictSavedModel: x=[2.0] gives float_val [3.0], with and without output filter."""
    server = upstream_server("default", HALF_PLUS_TWO)
    verify_predict(server.channel, 3.0, model_version(HALF_PLUS_TWO))
    verify_predict(server.channel, 3.0, model_version(HALF_PLUS_TWO), specify_output=False)


def test_good_model_config(upstream_server: Starter, tmp_path: Path) -> None:
    """testGoodModelConfig: two models from upstream's config template, 3.0 and 4.0."""
    server = upstream_server(model_config_file=write_good_config(tmp_path))
    for name, output, path in (
        ("half_plus_two", 3.0, HALF_PLUS_TWO),
        ("half_plus_three", 4.0, HALF_PLUS_THREE),
    ):
        verify_predict(server.channel, output, model_version(path), model_name=name)
        verify_predict(
            server.channel, output, model_version(path), model_name=name, specify_output=False
        )


def test_bad_model_config(capsys: pytest.CaptureFixture[str]) -> None:
    """testBadModelConfig: a malformed config file names the text-format parse error."""
    from modelserver.main import main

    status = main(
        [
            "--port=0",
            f"--model_config_file={UPSTREAM / 'bad_model_config.txt'}",
            "--max_num_load_retries=0",
        ]
    )
    assert status != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in (
        capsys.readouterr().err
    )


def test_model_config_reload(upstream_server: Starter, tmp_path: Path) -> None:
    """testModelConfigReload: a polled config switches from half_plus_two to half_plus_three."""
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(single_model_config("half_plus_two", HALF_PLUS_TWO))
    server = upstream_server(model_config_file=config_path, model_config_file_poll_period=1)
    verify_predict(
        server.channel,
        3.0,
        model_version(HALF_PLUS_TWO),
        model_name="half_plus_two",
        specify_output=False,
    )
    config_path.write_text(single_model_config("half_plus_three", HALF_PLUS_THREE))
    deadline = time.monotonic() + 10  # upstream sleeps 10 s
    while True:
        try:
            verify_predict(
                server.channel,
                4.0,
                model_version(HALF_PLUS_THREE),
                model_name="half_plus_three",
                specify_output=False,
            )
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the new config was not applied within 10 s"
            time.sleep(0.25)


def test_model_config_reload_with_zero_poll_period(
    upstream_server: Starter, tmp_path: Path
) -> None:
    """testModelConfigReloadWithZeroPollPeriod: poll period 0 reads the config once."""
    config_path = tmp_path / "model_config.txt"
    config_path.write_text(single_model_config("half_plus_two", HALF_PLUS_TWO))
    server = upstream_server(model_config_file=config_path, model_config_file_poll_period=0)
    verify_predict(
        server.channel,
        3.0,
        model_version(HALF_PLUS_TWO),
        model_name="half_plus_two",
        specify_output=False,
    )
    config_path.write_text(single_model_config("half_plus_three", HALF_PLUS_THREE))
    time.sleep(2)
    verify_predict(
        server.channel,
        3.0,
        model_version(HALF_PLUS_THREE),
        model_name="half_plus_two",
        specify_output=False,
    )


def test_good_grpc_channel_args(upstream_server: Starter) -> None:
    """testGoodGrpcChannelArgs: the server starts and serves with extra channel arguments."""
    server = upstream_server(
        "default",
        HALF_PLUS_TWO,
        grpc_channel_arguments="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
    )
    verify_predict(server.channel, 3.0, model_version(HALF_PLUS_THREE), specify_output=False)


def test_classify_rest(upstream_server: Starter) -> None:
    """testClassifyREST: {"results": [[["", 3.0]]]}."""
    server = upstream_server("default", HALF_PLUS_TWO)
    body = call_rest(
        server,
        "/v1/models/default:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert json.loads(body) == {"results": [[["", 3.0]]]}


def test_regress_rest(upstream_server: Starter) -> None:
    """testRegressREST: {"results": [3.0]}."""
    server = upstream_server("default", HALF_PLUS_TWO)
    body = call_rest(
        server,
        "/v1/models/default:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
    )
    assert json.loads(body) == {"results": [3.0]}


def test_predict_rest(upstream_server: Starter) -> None:
    """testPredictREST: instances [2,3,4] on x declared [-1,1] give [3.0, 3.5, 4.0]."""
    server = upstream_server("default", HALF_PLUS_TWO)
    body = call_rest(server, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert json.loads(body) == {"predictions": [3.0, 3.5, 4.0]}


def test_predict_columnar_rest(upstream_server: Starter) -> None:
    """testPredictColumnarREST: columnar inputs [2,3,4] give outputs [3.0, 3.5, 4.0]."""
    server = upstream_server("default", HALF_PLUS_TWO)
    body = call_rest(server, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert json.loads(body) == {"outputs": [3.0, 3.5, 4.0]}


def test_get_status_rest(upstream_server: Starter) -> None:
    """testGetStatusREST: version "123" AVAILABLE with an OK status."""
    server = upstream_server("default", HALF_PLUS_TWO)
    assert json.loads(call_rest(server, "/v1/models/default")) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_get_model_metadata_rest(upstream_server: Starter) -> None:
    """testGetModelMetadataREST: equal (sorted) to upstream's half_plus_two_model_metadata.json."""
    server = upstream_server("default", HALF_PLUS_TWO)
    body = call_rest(server, "/v1/models/default/metadata")
    expected = json.loads((UPSTREAM / "half_plus_two_model_metadata.json").read_text())
    assert sorted_object(json.loads(body)) == sorted_object(expected)


def test_prometheus_endpoint(upstream_server: Starter) -> None:
    """testPrometheusEndpoint: the metrics page carries type information."""
    server = upstream_server(
        "default", HALF_PLUS_TWO, monitoring_config_file=UPSTREAM / "monitoring_config.txt"
    )
    assert "# TYPE" in call_rest(server, "/monitoring/prometheus/metrics").decode()


def test_predict_uds(upstream_server: Starter, tmp_path: Path) -> None:
    """testPredictUDS: Predict over the --grpc_socket_path Unix socket."""
    upstream_server("default", HALF_PLUS_TWO)
    with grpc.insecure_channel(f"unix:{tmp_path / 'tf-serving.sock'}") as channel:
        verify_predict(channel, 3.0, model_version(HALF_PLUS_THREE), specify_output=False)


def _save_in_00000123(tmp_path: Path, name: str, build: Callable[[Path], None]) -> Path:
    base = tmp_path / name
    build(base / "00000123")
    return base


def test_tf_saved_model_save(upstream_server: Starter, tmp_path: Path) -> None:
    """test_tf_saved_model_save: a tf.saved_model.save'd function of unknown-rank x gives 12."""
    import tensorflow as tf

    def build(export_path: Path) -> None:
        root = tf.train.Checkpoint()
        root.v1 = tf.Variable(3.0)
        root.v2 = tf.Variable(2.0)
        root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
        to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
        tf.saved_model.save(root, str(export_path), to_save)

    base = _save_in_00000123(tmp_path, "tf_saved_model_save", build)
    server = upstream_server("default", base)
    verify_predict(server.channel, 12.0, model_version(base), specify_output=False)


def test_tf_saved_model_save_multiple_signatures(upstream_server: Starter, tmp_path: Path) -> None:
    """test_tf_saved_model_save_multiple_signatures: the default and a custom signature."""
    import tensorflow as tf

    def build(export_path: Path) -> None:
        root = tf.train.Checkpoint()
        spec = [tf.TensorSpec(None, tf.float32)]
        root.f = tf.function(lambda x: {"y": 1.0}, input_signature=spec)
        root.g = tf.function(lambda x: {"y": 2.0}, input_signature=spec)
        tf.saved_model.save(
            root,
            str(export_path),
            signatures={"serving_default": root.f, "custom_signature_key": root.g},
        )

    base = _save_in_00000123(tmp_path, "tf_saved_model_save", build)
    server = upstream_server("default", base)
    verify_predict(server.channel, 2.0, model_version(base), signature_name="custom_signature_key")
    verify_predict(server.channel, 1.0, model_version(base))


def test_fixture_models_are_upstreams() -> None:
    """The fixture holds upstream's models in 00000123 directories, not renamed copies."""
    for model in (HALF_PLUS_TWO, HALF_PLUS_TWO_TF2, HALF_PLUS_THREE):
        assert [p.name for p in model.iterdir()] == ["00000123"]
        assert (model / "00000123" / "saved_model.pb").stat().st_size > 1000
