"""Server features across components: batching, config-file polling, reload adding a model."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from .conftest import ModelFiles, RunningServer


def config_text(*models: tuple[str, Path]) -> str:
    entries = "".join(
        f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}\n'
        for name, base in models
    )
    return f"model_config_list {{\n{entries}}}\n"


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_batching_merges_concurrent_requests(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """With --enable_batching concurrent predicts share batches and each gets its own rows."""
    models.place(tmp_path / "m", 1)
    params = tmp_path / "batching.config"
    params.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 20000 }"
        " num_batch_threads { value: 1 } max_enqueued_batches { value: 100 }"
    )
    server: RunningServer = server_factory(
        "--model_name=m",
        f"--model_base_path={tmp_path / 'm'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
    )
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda x: server.post_json("/v1/models/m:predict", {"instances": [float(x)]}),
                range(32),
            )
        )
    assert answers == [(200, {"predictions": [0.5 * x + 2]}) for x in range(32)]
    assert server.server.batcher is not None
    assert 0 < server.server.batcher.scheduler.batches_run < 32


def test_batching_file_without_enable_batching_is_refused(tmp_path: Path) -> None:
    """--batching_parameters_file without --enable_batching is an error, as upstream."""
    from modelserver.errors import ServingError
    from modelserver.flags import parse_flags
    from modelserver.server import ModelServer

    flags = parse_flags(["--model_base_path=/m", f"--batching_parameters_file={tmp_path}/b"])
    try:
        ModelServer(flags)
    except ServingError as error:
        assert "enable_batching" in error.message
    else:
        raise AssertionError("the server accepted the flags")


def test_config_file_polling_applies_changes_and_keeps_old_on_error(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """A changed config file is applied in full; an unparsable one keeps the current config."""
    models.place(tmp_path / "a", 1)
    models.place(tmp_path / "b", 1, "v2")
    config = tmp_path / "models.config"
    config.write_text(config_text(("a", tmp_path / "a")))
    server: RunningServer = server_factory(
        f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"
    )
    config.write_text(config_text(("b", tmp_path / "b")))
    wait_for(lambda: server.post_json("/v1/models/b:predict", {"instances": [0.0]})[0] == 200)
    wait_for(lambda: server.post_json("/v1/models/a:predict", {"instances": [0.0]})[0] == 404)
    config.write_text("model_config_list { this is not a config")
    time.sleep(1.5)  # two poll intervals: the broken file must not change anything
    assert server.post_json("/v1/models/b:predict", {"instances": [0.0]}) == (
        200,
        {"predictions": [3.0]},
    )


def test_grpc_reload_adds_a_model_and_blocks_until_available(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """HandleReloadConfigRequest returns once a newly added model is AVAILABLE."""
    models.place(tmp_path / "a", 1)
    models.place(tmp_path / "b", 4, "v2")
    server: RunningServer = server_factory("--model_name=a", f"--model_base_path={tmp_path / 'a'}")
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = model_management_pb2.ReloadConfigRequest()
    for name in ("a", "b"):
        entry = request.config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(tmp_path / name)
        entry.model_platform = "tensorflow"
    response = stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    status, body = server.get_json("/v1/models/b")
    assert status == 200
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    # A reload naming a model without versions on disk would block: the deadline ends the call.
    request.config.model_config_list.config[1].base_path = str(tmp_path / "nothing")
    request.config.model_config_list.config[1].name = "c"
    try:
        stub.HandleReloadConfigRequest(request, timeout=1)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        raise AssertionError("the reload returned although model c has no version")
    assert json.loads(server.request("GET", "/v1/models/b")[1])["model_version_status"][0][
        "state"
    ] in ("AVAILABLE", "UNLOADING", "END")


def test_rollout_and_rollback_under_load_fail_no_request(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """While versions change (new one in, old one out, then back) every request succeeds."""
    models.place(tmp_path / "m", 1)
    server: RunningServer = server_factory(
        "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--file_system_poll_wait_seconds=1"
    )
    answers: list[Any] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            answers.append(server.post_json("/v1/models/m:predict", {"instances": [2.0]}))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        models.place(tmp_path / "m", 2, "v2")
        wait_for(
            lambda: (
                server.get_json("/v1/models/m/versions/1")[1]["model_version_status"][0]["state"]
                == "END"
            )
        )
        shutil.rmtree(tmp_path / "m" / "2")
        wait_for(
            lambda: (
                server.get_json("/v1/models/m/versions/1")[1]["model_version_status"][0]["state"]
                == "AVAILABLE"
            )
        )
        wait_for(
            lambda: (
                server.get_json("/v1/models/m/versions/2")[1]["model_version_status"][0]["state"]
                == "END"
            )
        )
        stop.set()
    results = {json.dumps(a) for a in answers}
    assert results <= {
        json.dumps([200, {"predictions": [3.0]}]),
        json.dumps([200, {"predictions": [4.0]}]),
    }
    assert json.dumps([200, {"predictions": [4.0]}]) in results
    assert len(answers) > 20
