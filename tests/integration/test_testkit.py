"""The public test kit, used as a user would: only ``tfstack.testing`` is imported from tfstack.

Models come from the demo model repository (the ``demo_models`` fixture writes it once).
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import requests
import yaml

from tfstack.testing import StackHandle, TFServingContainer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RESNET_BODY = json.loads((ROOT / "config" / "samples" / "resnet.json").read_text())


def test_serving_container_predicts_over_rest_and_grpc(
    runtime_image: object, demo_models: Path
) -> None:
    """half_plus_two and ResNet-50 in one container: REST and gRPC predictions and metadata."""
    models = {"half_plus_two": demo_models / "half_plus_two", "resnet": demo_models / "resnet"}
    with TFServingContainer(models=models) as serving:
        assert serving.rest_url.startswith("http://127.0.0.1:")
        assert serving.predict("half_plus_two", [1.0, 2.0, 5.0]) == [2.5, 3.0, 4.5]
        assert serving.predict("half_plus_two", [1.0, 2.0], grpc=True) == [2.5, 3.0]
        assert serving.regress(
            "half_plus_two", [{"x": 1.0}], signature="regress_x_to_y"
        ) == pytest.approx([2.5])
        rest_answer = serving.predict("resnet", RESNET_BODY["instances"])
        grpc_answer = serving.predict("resnet", RESNET_BODY["instances"], grpc=True)
        assert len(rest_answer) == len(grpc_answer) == len(RESNET_BODY["instances"])
        assert "serving_default" in json.dumps(serving.metadata("resnet", grpc=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def two_model_project(root: Path, models: Path) -> Path:
    """A spec serving half_plus_two and half_plus_three from copies of the demo models."""
    (root / "config").mkdir()
    for name in ("half_plus_two", "half_plus_three"):
        shutil.copytree(models / name, root / "models" / name)
    for item in [root, *root.rglob("*")]:  # the server runs as uid 1000
        item.chmod(0o755 if item.is_dir() else 0o644)
    spec = {
        "format": 1,
        "project": f"tfstack-kit-{uuid.uuid4().hex[:8]}",
        "model_repository": "../models",
        "models": [{"name": "half_plus_two"}, {"name": "half_plus_three"}],
        "serving": {
            "image": "tfstack/serving-runtime:latest",
            "rest_port": free_port(),
            "grpc_port": free_port(),
        },
    }
    path = root / "config" / "stack.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_stack_fixture_brings_a_two_model_spec_up_and_down(
    tfstack_stack: Callable[..., StackHandle],
    tmp_path: Path,
    runtime_image: object,
    demo_models: Path,
) -> None:
    """tfstack_stack brings a spec up; both models answer over REST and gRPC; down removes it."""
    stack = tfstack_stack(two_model_project(tmp_path, demo_models), source_root=ROOT)
    assert stack.predict("half_plus_two", [1.0]) == [2.5]
    assert stack.predict("half_plus_three", [1.0], grpc=True) == [3.5]
    stack.down()
    client = docker.from_env()
    left = client.containers.list(
        all=True, filters={"label": f"org.tfstack.project={stack.spec.project}"}
    )
    client.close()
    assert left == []
    with pytest.raises(requests.ConnectionError):  # the ports are closed: the stack is gone
        stack.predict("half_plus_two", [1.0])
