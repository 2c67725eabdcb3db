"""The runtime's readiness endpoint (GET /readyz): the probe's rule over the current config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from modelserver.readiness import READY_PATH

from .conftest import ModelFiles, RunningServer


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.config"
    path.write_text(f"model_config_list {{ {body} }}")
    return path


def _ready(server: RunningServer) -> tuple[int, Any]:
    status, data = server.request("GET", READY_PATH)
    return status, json.loads(data)


def test_ready_when_every_declared_version_and_label_is_available(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """200 {"ready": true} once the declared versions and labels are AVAILABLE."""
    models.place(tmp_path / "hp", 1)
    models.place(tmp_path / "hp", 2, "v2")
    config = _config(
        tmp_path,
        f'config {{ name: "hp" base_path: "{tmp_path / "hp"}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 versions: 2 } } "
        'version_labels { key: "stable" value: 1 } }',
    )
    server: RunningServer = server_factory(
        f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true"
    )
    assert _ready(server) == (200, {"ready": True, "problems": []})


def test_not_ready_while_a_declared_version_is_missing(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """503 naming the version a specific policy lists but the server does not serve."""
    models.place(tmp_path / "hp", 1)
    config = _config(
        tmp_path,
        f'config {{ name: "hp" base_path: "{tmp_path / "hp"}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 versions: 7 } } }",
    )
    server: RunningServer = server_factory(f"--model_config_file={config}")
    status, body = _ready(server)
    assert status == 503
    assert body == {"ready": False, "problems": ["model hp: version 7 is not AVAILABLE"]}


def test_readiness_follows_a_reload_that_adds_an_unloadable_model(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """After a hot reload the endpoint judges the new config, not the one given at start."""
    models.place(tmp_path / "hp", 1)
    models.place(tmp_path / "broken", 1, "corrupt")
    server: RunningServer = server_factory(
        "--model_name=hp", f"--model_base_path={tmp_path / 'hp'}"
    )
    assert _ready(server)[0] == 200
    request = model_management_pb2.ReloadConfigRequest()
    configs = request.config.model_config_list.config
    for name in ("hp", "broken"):
        entry: Any = model_server_config_pb2.ModelConfig(
            name=name, base_path=str(tmp_path / name), model_platform="tensorflow"
        )
        configs.append(entry)
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    with pytest.raises(grpc.RpcError):  # the reload itself reports the failed load
        stub.HandleReloadConfigRequest(request, timeout=60)
    status, body = _ready(server)
    assert status == 503
    assert body["problems"] == ["model broken: no version is AVAILABLE"]


def test_readiness_is_not_a_tf_serving_route(
    models: ModelFiles, tmp_path: Path, server_factory: Any
) -> None:
    """Only GET answers; other paths outside /v1 still get upstream's plain 404."""
    models.place(tmp_path / "hp", 1)
    server: RunningServer = server_factory(
        "--model_name=hp", f"--model_base_path={tmp_path / 'hp'}"
    )
    assert server.request("GET", "/readyz/extra")[0] == 404
    assert server.request("POST", READY_PATH, "{}")[0] == 404
