"""Warmup replay before a version turns AVAILABLE, and the healthcheck probe's exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from modelserver import dispatch, probe
from modelserver.errors import ServingError
from modelserver.servable import SessionOptions, load_servable
from modelserver.server import StartupError
from modelserver.warmup import WARMUP_FILE, run_warmup

from .conftest import ModelFiles, RunningServer


def predict_log(input_name: str = "x") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array([1.0], dtype=np.float32)))
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request)
    return log.SerializeToString()


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def load(version_dir: Path) -> Any:
    return load_servable("m", int(version_dir.name), str(version_dir), SessionOptions())


def test_warmup_records_are_replayed(models: ModelFiles, tmp_path: Path) -> None:
    """Every record of the warmup file runs against the new version."""
    version = models.place(tmp_path, 1)
    write_warmup(version, [predict_log(), predict_log()])
    assert run_warmup(load(version), iterations=1) == 2


def test_missing_warmup_file_is_fine(models: ModelFiles, tmp_path: Path) -> None:
    """Without a warmup file nothing runs and the load goes on."""
    assert run_warmup(load(models.place(tmp_path, 1))) == 0


@pytest.mark.parametrize(
    ("records", "text"),
    [
        ([predict_log("nope")], "Warmup record 0"),
        ([b"\x01\x02 not a PredictionLog"], "warmup record 0"),
        ([prediction_log_pb2.PredictionLog().SerializeToString()], "Unsupported log_type"),
        ([predict_log()] * 1001, "exceeds the maximum (1000)"),
    ],
)
def test_bad_warmup_fails_the_load(
    models: ModelFiles, tmp_path: Path, records: list[bytes], text: str
) -> None:
    """A failing, unparsable or unsupported record, or more than 1000, fail the load."""
    version = models.place(tmp_path, 1)
    write_warmup(version, records)
    with pytest.raises(ServingError, match=text.replace("(", r"\(").replace(")", r"\)")):
        run_warmup(load(version))


def test_server_refuses_version_whose_warmup_fails(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """The server never makes a version AVAILABLE when its warmup fails; ok warmup serves."""
    good = models.place(tmp_path / "m", 1)
    write_warmup(good, [predict_log()])
    server: RunningServer = server_factory(
        "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--file_system_poll_wait_seconds=0"
    )
    assert server.post_json("/v1/models/m:predict", {"instances": [2.0]}) == (
        200,
        {"predictions": [3.0]},
    )
    bad = models.place(tmp_path / "bad", 1)
    write_warmup(bad, [predict_log("nope")])
    with pytest.raises(StartupError, match="Warmup record 0"):
        server_factory("--model_name=bad", f"--model_base_path={tmp_path / 'bad'}")


def test_warmup_reports_one_warm_cost_per_api_and_signature(
    models: ModelFiles, tmp_path: Path
) -> None:
    """Warmup tells its listener the cost of the first record of each API and signature (not
    of repeats), the fastest of its replays, and still replays and counts every record."""
    version = models.place(tmp_path, 1)
    write_warmup(version, [predict_log(), predict_log(), predict_log()])
    costs: list[tuple[str, float]] = []
    assert run_warmup(load(version), on_cost=lambda api, s: costs.append((api, s))) == 3
    assert [api for api, _ in costs] == ["predict"]
    assert 0 < costs[0][1] < 60


def _count_inline_runs(policy: dispatch.InlinePolicy) -> list[object]:
    calls: list[object] = []
    run_inline = policy.run_inline

    def counting(key: Any, work: Any) -> Any:
        calls.append(key)
        return run_inline(key, work)

    policy.run_inline = counting  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("case", [(5.0, True), (1e-12, False)], ids=["cheap", "heavy"])
def test_warmup_teaches_the_inline_policy_before_the_first_request(
    models: ModelFiles,
    tmp_path: Path,
    server_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[float, bool],
) -> None:
    """Warmup runs teach the REST inline policy, so the very first REST predict of a model whose
    warmup cost is under the limit already runs on the event loop, and a model costlier than the
    limit (a heavy model) never does; gRPC (worker threads, no policy) answers either way. The
    limit is injected (5 s: every run is cheap; 1e-12 s: every run is heavy) so the outcome does
    not depend on how fast or loaded the machine is."""
    limit, inline = case
    monkeypatch.setattr(dispatch, "INLINE_MAX_SECONDS", limit)
    version = models.place(tmp_path / "m", 1)
    write_warmup(version, [predict_log()])
    server: RunningServer = server_factory(
        "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--file_system_poll_wait_seconds=0"
    )
    rest_policy = server.server.rest_inline
    assert rest_policy.max_seconds == limit
    assert rest_policy.inline(("predict", "m"), 10) is inline
    rest_runs = _count_inline_runs(rest_policy)
    assert server.post_json("/v1/models/m:predict", {"instances": [2.0]}) == (
        200,
        {"predictions": [3.0]},
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([4.0], dtype=np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [4.0]
    assert len(rest_runs) == (1 if inline else 0)


# ----------------------------------------------------------------------------- probe

CONFIG = """
# a comment
model_config_list {
  config {
    name: "hp"
    base_path: "/models/hp"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
  }
  config: { name: 'other' base_path: "/models/other" model_platform: "tensorflow" }
}
"""


def test_probe_reads_the_declared_models() -> None:
    """The probe's stdlib parser reads names, specific versions and labels."""
    declared = probe.declared_models(CONFIG)
    assert [(m.name, m.policy, m.versions, m.labels) for m in declared] == [
        ("hp", "specific", [1, 2], {"stable": 1}),
        ("other", "latest", [], {}),
    ]


def test_probe_missing_rules() -> None:
    """Specific versions, at least one version, and labelled versions must be AVAILABLE."""
    hp, other = probe.declared_models(CONFIG)
    assert probe.missing(hp, {1, 2}) == []
    assert probe.missing(hp, {2}) == [
        "model hp: version 1 is not AVAILABLE",
        "model hp: label stable -> version 1 is not AVAILABLE",
    ]
    assert probe.missing(other, set()) == ["model other: no version is AVAILABLE"]


def test_probe_exit_codes_against_a_server(
    models: ModelFiles, tmp_path: Path, server_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 when every declared model serves; 1 naming what is missing or unreachable."""
    models.place(tmp_path / "hp", 1)
    server: RunningServer = server_factory(
        "--model_name=hp", f"--model_base_path={tmp_path / 'hp'}"
    )
    port = str(server.rest_port)
    good = tmp_path / "good.config"
    good.write_text('model_config_list { config { name: "hp" base_path: "/x" } }')
    assert probe.main(["--rest-port", port, "--model-config", str(good)]) == 0
    bad = tmp_path / "bad.config"
    bad.write_text(
        'model_config_list { config { name: "hp" '
        "model_version_policy { specific { versions: 3 } } }"
        ' config { name: "ghost" } }'
    )
    assert probe.main(["--rest-port", port, "--model-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "model hp: version 3 is not AVAILABLE" in err
    assert "model ghost: HTTP 404" in err
    assert probe.main(["--rest-port", "1", "--model-name", "hp"]) == 1
    assert "unreachable" in capsys.readouterr().err
