"""monitoring.prometheus: a stack with Prometheus on scrapes the replicas; a query sees requests."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
import yaml

from tfstack.build.images import BuiltImage
from tfstack.models.demo import write_half_plus
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.top import TopSource, snapshot_once

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUERY_DEADLINE_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sweep(client: docker.DockerClient, project: str) -> None:
    """Remove anything left with the project's labels (containers, networks, volumes)."""
    selector = {"label": f"org.tfstack.project={project}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


@pytest.fixture
def observed(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> Iterator[tuple[Lifecycle, dict[str, Any]]]:
    """A project serving one model with Prometheus on (1 s scrapes); removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tfstack-it-prom-"))
    root.chmod(0o755)
    version = root / "models" / "half_plus_two" / "1"
    write_half_plus(version, offset=2.0, offset2=3.0, model_name="half_plus_two")
    for item in [root, *root.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    (root / "config").mkdir(mode=0o755)
    name = f"tfstack-it-{secrets.token_hex(4)}"
    spec = {
        "format": 1,
        "project": name,
        "model_repository": "../models",
        "models": [{"name": "half_plus_two", "slo": {"error_rate": 0.01}}],
        "serving": {
            "image": runtime_image.id,
            "rest_port": free_port(),
            "grpc_port": free_port(),
            "max_load_retries": 0,
        },
        "monitoring": {
            "prometheus": True,
            "prometheus_port": free_port(),
            "scrape_interval_seconds": 1,
        },
    }
    spec_path = root / "config" / "stack.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    lifecycle = Lifecycle(spec_path, source_root=ROOT, client=docker_client)
    try:
        yield lifecycle, spec
    finally:
        with contextlib.suppress(Exception):
            lifecycle.down(volumes=True)
        sweep(docker_client, name)
        shutil.rmtree(root, ignore_errors=True)


def query(port: int, promql: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}, timeout=5
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_the_request_counter(
    observed: tuple[Lifecycle, dict[str, Any]], docker_client: docker.DockerClient
) -> None:
    """After 20 predicts, Prometheus answers the servers' request counter for the model."""
    lifecycle, spec = observed
    lifecycle.up(timeout=150)
    rest = f"http://127.0.0.1:{spec['serving']['rest_port']}"
    for _ in range(20):
        answer = requests.post(
            f"{rest}/v1/models/half_plus_two:predict", json={"instances": [1.0]}, timeout=10
        )
        assert answer.status_code == 200, answer.text
    port = spec["monitoring"]["prometheus_port"]
    promql = 'sum(:tensorflow:serving:request_count{model_name="half_plus_two",status="OK"})'
    deadline = time.monotonic() + QUERY_DEADLINE_S
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            seen = query(port, promql)
            if seen and float(seen[0]["value"][1]) >= 20:
                break
        time.sleep(1)
    assert seen and float(seen[0]["value"][1]) >= 20, seen
    targets = requests.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()
    health = [t["health"] for t in targets["data"]["activeTargets"]]
    assert health == ["up"], targets
    container = docker_client.containers.list(
        filters={"label": [f"org.tfstack.project={spec['project']}"], "name": "prometheus"}
    )[0]
    container.reload()
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert container.attrs["Config"]["User"] == "prometheus"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/prometheus"]["Type"] == "volume"


def test_top_once_sees_live_traffic(observed: tuple[Lifecycle, dict[str, Any]]) -> None:
    """top --once: predicts sent between its two scrapes show as requests of the model."""
    lifecycle, spec = observed
    lifecycle.up(timeout=150)
    rest = f"http://127.0.0.1:{spec['serving']['rest_port']}"
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            requests.post(
                f"{rest}/v1/models/half_plus_two:predict", json={"instances": [1.0]}, timeout=10
            )
            time.sleep(0.02)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        source = TopSource.open(lifecycle.spec_path, source_root=ROOT)
        document = snapshot_once(source, interval=2.0).to_json()
    finally:
        stop.set()
        worker.join(timeout=15)
    assert document["schema"] == "tfstack.top/v1"
    (row,) = document["models"]
    assert row["name"] == "half_plus_two" and row["requests"] > 0, document
    assert row["error_rate"] == 0.0 and row["p99_ms"] is not None
    assert [r["up"] for r in document["replicas"]] == [True]
