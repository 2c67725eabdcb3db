"""The stack lifecycle against a real engine: `up`, hot reload, failure paths and `down`.

One throw-away project (temp directory: config/stack.yaml and a model repository written with
TensorFlow) is served on free non-default ports. The tests of the `TestStack` class run in order
against the same stack; each failure-path test outside it makes its own project. Everything
created is removed by finalizers (`down --volumes`, then a label sweep), even when a test fails.

The image is the runtime image (session fixture `runtime_image`, pinned by id under a private tag
so a concurrent rebuild cannot move it), or `TFSTACK_SERVING_IMAGE` when set (e.g. the official
tensorflow/serving image, which has no healthcheck probe: the healthcheck is then switched off).
"""

from __future__ import annotations

import contextlib
import gc
import os
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
from tfstack.docker.engine import docker_client as connect
from tfstack.errors import EngineError, SpecError, StackError
from tfstack.models.demo import write_half_plus
from tfstack.serving.client import GrpcClient, ModelRef, RestClient, format_signatures
from tfstack.serving.tensors import json_to_tensor
from tfstack.serving.waiting import LoadFailed
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.plan import UpAction

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_model(path: Path, offset: float) -> None:

    write_half_plus(path, offset=offset, offset2=offset + 1, model_name=path.parent.name)
    _open_up(path)


def _open_up(path: Path) -> None:
    """The server runs as uid 1000: every directory and file must be readable by it."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


class Project:
    """A temp project directory: config/stack.yaml, models/, and what tfstack renders."""

    def __init__(self, image: str, *, healthcheck: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tfstack-it-stack-"))
        self.root.chmod(0o755)
        (self.root / "config").mkdir(mode=0o755)
        (self.root / "models").mkdir(mode=0o755)
        self.name = f"tfstack-it-{secrets.token_hex(4)}"
        self.rest_port = free_port()
        self.grpc_port = free_port()
        self.image = image
        self.healthcheck = healthcheck
        self.models: list[dict[str, Any]] = []
        self.serving_extra: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # more top-level sections (e.g. frontend)

    @property
    def spec_path(self) -> Path:
        return self.root / "config" / "stack.yaml"

    def write(self) -> Path:
        spec = {
            "format": 1,
            "project": self.name,
            "model_repository": "../models",
            "models": self.models,
            "serving": {
                "image": self.image,
                "rest_port": self.rest_port,
                "grpc_port": self.grpc_port,
                "max_load_retries": 0,
                "healthcheck": self.healthcheck,
                **self.serving_extra,
            },
            **self.extra,
        }
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return self.spec_path

    def lifecycle(self, client: docker.DockerClient) -> Lifecycle:
        return Lifecycle(self.spec_path, source_root=ROOT, client=client)

    def rest(self) -> RestClient:
        return RestClient(f"http://127.0.0.1:{self.rest_port}", timeout=15)

    def grpc(self) -> GrpcClient:
        return GrpcClient(f"127.0.0.1:{self.grpc_port}", timeout=15)


def sweep(client: docker.DockerClient, project: str) -> None:
    """Remove anything left with the project's labels (containers, networks, volumes)."""
    selector = {"label": f"org.tfstack.project={project}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


@pytest.fixture(scope="module")
def serving_image(
    docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[tuple[str, bool]]:
    """(image, healthcheck): TFSTACK_SERVING_IMAGE as is, or the runtime image (private tag)."""
    other = os.environ.get("TFSTACK_SERVING_IMAGE")
    if other:
        try:
            docker_client.images.get(other)
        except docker.errors.ImageNotFound:
            pytest.fail(f"TFSTACK_SERVING_IMAGE={other} is not on the engine (no registry here)")
        yield other, False
        return
    built: BuiltImage = request.getfixturevalue("runtime_image")
    tag = f"tfstack-it/serving:{secrets.token_hex(4)}"
    repository, version = tag.split(":")
    docker_client.images.get(built.id).tag(repository, version)
    yield tag, True
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(tag, noprune=True)


@pytest.fixture(scope="module")
def repository() -> Iterator[Path]:
    """Model versions written once with TensorFlow (different math per version), copied per test."""
    base = Path(tempfile.mkdtemp(prefix="tfstack-it-models-"))
    write_model(base / "half_plus_two" / "1", 2.0)
    write_model(base / "half_plus_two" / "2", 3.0)
    write_model(base / "half_plus_two" / "3", 4.0)
    write_model(base / "half_plus_three" / "1", 3.0)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def make_project(
    image: tuple[str, bool],
    repository: Path,
    client: docker.DockerClient,
    request: pytest.FixtureRequest,
) -> Project:
    project = Project(image[0], healthcheck=image[1])
    for name, versions in (("half_plus_two", ("1", "2")), ("half_plus_three", ("1",))):
        for version in versions:
            shutil.copytree(repository / name / version, project.root / "models" / name / version)
        _open_up(project.root / "models" / name)

    def cleanup() -> None:
        try:
            project.lifecycle(client).down(volumes=True)
        finally:
            sweep(client, project.name)
            shutil.rmtree(project.root, ignore_errors=True)

    request.addfinalizer(cleanup)
    project.models = [
        {
            "name": "half_plus_two",
            "policy": {"specific": [1, 2]},
            "labels": {"stable": 1, "canary": 2},
            "samples": [
                {"name": "predict", "body": {"instances": [1.0, 2.0, 5.0]}},
                {
                    "name": "regress",
                    "method": "regress",
                    "signature_name": "regress_x_to_y",
                    "body": {"examples": [{"x": 2.0}]},
                },
            ],
        },
        {
            "name": "half_plus_three",
            "samples": [
                {"body": {"instances": [2.0]}, "expect": {"predictions": [4.0]}, "tolerance": 1e-4}
            ],
        },
    ]
    project.write()
    return project


@pytest.fixture(scope="module")
def stack(
    serving_image: tuple[str, bool],
    repository: Path,
    docker_client: docker.DockerClient,
    request: pytest.FixtureRequest,
) -> Project:
    return make_project(serving_image, repository, docker_client, request)


def serving_container(client: docker.DockerClient, project: Project) -> tuple[str, str]:
    """(container id, StartedAt) of the project's serving container."""
    found = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project.name}"}
    )
    assert len(found) == 1, [c.name for c in found]
    found[0].reload()
    return found[0].id, found[0].attrs["State"]["StartedAt"]


class Traffic:
    """Background REST predicts on 127.0.0.1 while something changes; records every failure."""

    def __init__(self, project: Project, paths: list[str]) -> None:
        self.url = f"http://127.0.0.1:{project.rest_port}"
        self.paths = paths
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 120  # bounded even if stop() is never reached
        while not self._stop.is_set() and time.monotonic() < deadline:
            for path in self.paths:
                try:
                    response = session.post(self.url + path, json={"instances": [2.0]}, timeout=10)
                    if response.status_code != 200:
                        self.failures.append(
                            f"{path}: HTTP {response.status_code} {response.text[:200]}"
                        )
                except requests.RequestException as exc:
                    self.failures.append(f"{path}: {exc}")
                self.count += 1
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class TestStack:
    """One stack through its life: up, serve, no-op, hot reloads, a broken model, recreate, down."""

    def test_up_serves_every_declared_version_and_label(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """`up` starts the stack and returns only when every version and label is AVAILABLE."""
        report = stack.lifecycle(docker_client).up(timeout=UP_TIMEOUT_S)
        assert report.plan.action is UpAction.START
        assert report.status.ok, report.status.to_json()
        document = report.status.to_json()
        states = {
            (m["name"], v["version"]): v["state"] for m in document["models"] for v in m["versions"]
        }
        assert states == {
            ("half_plus_two", 1): "AVAILABLE",
            ("half_plus_two", 2): "AVAILABLE",
            ("half_plus_three", 1): "AVAILABLE",
        }
        assert document["models"][0]["labels"] == {
            "stable": {"declared": 1, "serving": 1},
            "canary": {"declared": 2, "serving": 2},
        }
        assert all(result.ok for result in report.smoke)
        assert {r.target for r in report.smoke if r.model == "half_plus_two"} == {
            "default",
            "version 1",
            "version 2",
            "label stable",
            "label canary",
        }
        service = document["services"][0]
        assert service["endpoints"]["rest"] == f"http://127.0.0.1:{stack.rest_port}"
        assert report.sample is not None

    def test_ports_are_published_on_loopback_only(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """The serving ports are bound to 127.0.0.1, never to every interface."""
        container_id, _ = serving_container(docker_client, stack)
        ports = docker_client.containers.get(container_id).attrs["NetworkSettings"]["Ports"]
        bindings = [b for entries in ports.values() if entries for b in entries]
        assert bindings and {b["HostIp"] for b in bindings} == {"127.0.0.1"}

    @pytest.mark.parametrize(
        ("ref", "expected"),
        [
            (ModelRef("half_plus_two"), [3.5, 4.0]),  # default: the highest served version (2)
            (ModelRef("half_plus_two", version=1), [2.5, 3.0]),
            (ModelRef("half_plus_two", version=2), [3.5, 4.0]),
            (ModelRef("half_plus_two", label="stable"), [2.5, 3.0]),
            (ModelRef("half_plus_two", label="canary"), [3.5, 4.0]),
            (ModelRef("half_plus_three"), [3.5, 4.0]),
        ],
    )
    def test_rest_and_grpc_predictions(
        self, stack: Project, ref: ModelRef, expected: list[float]
    ) -> None:
        """REST and gRPC answer with each version's own math, by version and by label."""
        body = {"instances": [1.0, 2.0]}
        rest = stack.rest()
        try:
            assert rest.predict(ref, body) == {"predictions": expected}
        finally:
            rest.close()
        with stack.grpc() as grpc_client:
            assert grpc_client.predict_json(ref, body) == {"predictions": expected}
            raw = grpc_client.predict(ref, {"x": json_to_tensor([1.0, 2.0], "DT_FLOAT")})
            assert raw.model == ref.name
            if ref.version is not None:
                assert raw.version == ref.version

    def test_metadata_over_rest_and_grpc(self, stack: Project) -> None:
        """Metadata lists the signatures with dtypes and shapes, the same over REST and gRPC."""
        rest = stack.rest()
        try:
            over_rest = rest.metadata(ModelRef("half_plus_two", version=1))
        finally:
            rest.close()
        with stack.grpc() as grpc_client:
            over_grpc = grpc_client.metadata(ModelRef("half_plus_two", version=1))
        for metadata in (over_rest, over_grpc):
            signatures = metadata["metadata"]["signature_def"]["signature_def"]
            assert {"serving_default", "regress_x_to_y", "classify_x_to_y"} <= set(signatures)
            x = signatures["serving_default"]["inputs"]["x"]
            assert x["dtype"] == "DT_FLOAT"
            assert [int(d["size"]) for d in x["tensor_shape"]["dim"]] == [-1]
        text = format_signatures(over_grpc)
        assert "inputs['x'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1)" in text

    def test_second_up_changes_nothing(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """An `up` with nothing changed restarts nothing (same container id and StartedAt)."""
        before = serving_container(docker_client, stack)
        report = stack.lifecycle(docker_client).up(timeout=UP_TIMEOUT_S)
        assert report.plan.action is UpAction.NOOP
        assert serving_container(docker_client, stack) == before

    def test_hot_reload_adds_moves_and_removes_without_restart(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """Add a model, move a label, remove a model: live reload, no restart, no failed request."""
        before = serving_container(docker_client, stack)
        third = stack.root / "models" / "third" / "1"
        shutil.copytree(stack.root / "models" / "half_plus_three" / "1", third)
        _open_up(third.parent)
        stack.models[0]["labels"] = {"stable": 2, "canary": 1}
        stack.models[1] = {
            "name": "third",
            "samples": [{"body": {"instances": [2.0]}, "expect": {"predictions": [4.0]}}],
        }
        stack.write()
        paths = [
            "/v1/models/half_plus_two/labels/stable:predict",
            "/v1/models/half_plus_two/labels/canary:predict",
            "/v1/models/half_plus_two/versions/1:predict",
        ]
        with Traffic(stack, paths) as traffic:
            report = stack.lifecycle(docker_client).up(timeout=UP_TIMEOUT_S)
        assert report.plan.action is UpAction.RELOAD
        assert serving_container(docker_client, stack) == before
        assert traffic.count > 0 and traffic.failures == []
        rest = stack.rest()
        try:
            stable = rest.predict(ModelRef("half_plus_two", label="stable"), {"instances": [2.0]})
            assert stable == {"predictions": [4.0]}
            assert rest.predict(ModelRef("third"), {"instances": [2.0]}) == {"predictions": [4.0]}
            with pytest.raises(StackError) as gone:
                rest.predict(ModelRef("half_plus_three"), {"instances": [2.0]})
            assert getattr(gone.value, "status", None) == 404
        finally:
            rest.close()

    def test_label_to_a_new_version_moves_in_two_steps(
        self, stack: Project, docker_client: docker.DockerClient, repository: Path
    ) -> None:
        """stable -> a version not loaded yet: loaded first, label moved after; no failed request"""
        before = serving_container(docker_client, stack)
        shutil.copytree(
            repository / "half_plus_two" / "3", stack.root / "models" / "half_plus_two" / "3"
        )
        _open_up(stack.root / "models" / "half_plus_two")
        stack.models[0]["policy"] = {"specific": [2, 3]}
        stack.models[0]["labels"] = {"stable": 3, "canary": 2}
        stack.write()
        with Traffic(stack, ["/v1/models/half_plus_two/labels/stable:predict"]) as traffic:
            report = stack.lifecycle(docker_client).up(timeout=UP_TIMEOUT_S)
        assert report.plan.action is UpAction.RELOAD
        assert serving_container(docker_client, stack) == before
        assert traffic.count > 0 and traffic.failures == []
        rest = stack.rest()
        try:
            answer = rest.predict(ModelRef("half_plus_two", label="stable"), {"instances": [2.0]})
        finally:
            rest.close()
        assert answer == {"predictions": [5.0]}

    def test_corrupt_version_fails_up_and_the_rest_keeps_serving(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """A corrupt SavedModel ends in END with its error; `up` fails with it; others serve on."""
        broken = stack.root / "models" / "broken" / "1"
        broken.mkdir(parents=True)
        (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        _open_up(broken.parent)
        stack.models.append({"name": "broken"})
        stack.write()
        lifecycle = stack.lifecycle(docker_client)
        with pytest.raises(LoadFailed) as caught:
            lifecycle.up(timeout=UP_TIMEOUT_S)
        assert [f[:2] for f in caught.value.failures] == [("broken", 1)]
        assert "model broken version 1" in str(caught.value)
        status = lifecycle.status().to_json()
        broken_status = next(m for m in status["models"] if m["name"] == "broken")
        assert broken_status["versions"][0]["state"] == "END"
        assert broken_status["versions"][0]["error"]["message"]
        assert not status["ok"]
        others = [m for m in status["models"] if m["name"] != "broken"]
        assert others and all(m["ok"] for m in others)
        rest = stack.rest()
        try:
            assert rest.predict(ModelRef("third"), {"instances": [2.0]}) == {"predictions": [4.0]}
        finally:
            rest.close()

    def test_server_flag_change_recreates_the_container(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """A changed server flag recreates the container through Compose, and it serves again."""
        stack.models = [m for m in stack.models if m["name"] != "broken"]
        shutil.rmtree(stack.root / "models" / "broken")
        stack.serving_extra = {"rest_api_timeout_ms": 20_000}
        stack.write()
        before = serving_container(docker_client, stack)
        report = stack.lifecycle(docker_client).up(timeout=UP_TIMEOUT_S)
        assert report.plan.action is UpAction.RECREATE
        assert serving_container(docker_client, stack)[0] != before[0]
        assert report.status.ok

    def test_down_leaves_nothing_labelled(
        self, stack: Project, docker_client: docker.DockerClient
    ) -> None:
        """`down` removes the project's containers and network and nothing else."""
        bystander = docker_client.networks.create(
            f"{stack.name}-bystander", labels={"org.tfstack.test": "bystander"}
        )
        try:
            stack.lifecycle(docker_client).down(volumes=True)
            selector = {"label": f"org.tfstack.project={stack.name}"}
            assert docker_client.containers.list(all=True, filters=selector) == []
            assert docker_client.networks.list(filters=selector) == []
            compose = {"label": f"com.docker.compose.project={stack.name}"}
            assert docker_client.containers.list(all=True, filters=compose) == []
            docker_client.networks.get(bystander.id)  # still there
        finally:
            bystander.remove()


@pytest.fixture
def fresh(
    serving_image: tuple[str, bool],
    repository: Path,
    docker_client: docker.DockerClient,
    request: pytest.FixtureRequest,
) -> Project:
    return make_project(serving_image, repository, docker_client, request)


def test_port_in_use_is_reported_before_starting(
    fresh: Project, docker_client: docker.DockerClient
) -> None:
    """A taken REST port stops `up` before Compose runs, naming the port and the holder."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", fresh.rest_port))
        holder.listen()
        with pytest.raises(StackError) as caught:
            fresh.lifecycle(docker_client).up(timeout=30)
    text = str(caught.value)
    assert f"127.0.0.1:{fresh.rest_port} is in use by process {os.getpid()}" in text
    compose = {"label": f"com.docker.compose.project={fresh.name}"}
    assert docker_client.containers.list(all=True, filters=compose) == []


def test_missing_model_directory_is_a_spec_error(
    fresh: Project, docker_client: docker.DockerClient
) -> None:
    """A model whose directory does not exist is refused by validation, naming the directory."""
    fresh.models.append({"name": "ghost"})
    fresh.write()
    with pytest.raises(SpecError) as caught:
        fresh.lifecycle(docker_client).up(timeout=30)
    assert "ghost" in str(caught.value) and "does not exist" in str(caught.value)


# docker-py leaves the socket of a failed unix-socket connect to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_engine_not_running_is_a_clear_error(
    fresh: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no engine answering, `up` stops with EngineError naming where it looked."""

    dead = fresh.root / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    lifecycle = Lifecycle(fresh.spec_path, source_root=ROOT, engine=lambda: connect(timeout=5))
    try:
        lifecycle.up(timeout=30)
    except EngineError as exc:
        text = str(exc)
    else:
        pytest.fail("up succeeded without an engine")
    gc.collect()  # collect docker-py's leaked socket now, under this test's warning filter
    assert str(dead) in text
    assert "start the engine" in text


def free_port_range(count: int, avoid: tuple[int, ...] = ()) -> int:
    """The first of ``count`` consecutive free loopback ports (none of them in ``avoid``)."""
    for _ in range(200):
        start = free_port()
        ports = range(start, start + count)
        if start + count > 65535 or set(avoid) & set(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start
    raise AssertionError(f"no {count} consecutive free ports found")


def test_replicas_each_wait_serve_and_show_in_status(
    serving_image: tuple[str, bool],
    repository: Path,
    docker_client: docker.DockerClient,
    request: pytest.FixtureRequest,
) -> None:
    """Door off, with replicas: 2, `up` returns only when both containers serve (each asked on
    its own published port), and status lists each replica with its own endpoints and verdict
    (the door's replicas: tests/integration/test_frontdoor.py)."""
    project = make_project(serving_image, repository, docker_client, request)
    project.models = [
        {
            "name": "half_plus_two",
            "policy": {"specific": [1]},
            "samples": [{"body": {"instances": [2.0]}, "expect": {"predictions": [3.0]}}],
        }
    ]
    project.grpc_port = free_port_range(2)
    project.rest_port = free_port_range(2, (project.grpc_port, project.grpc_port + 1))
    project.serving_extra = {"replicas": 2}
    project.extra = {"frontend": {"enabled": False}}
    project.write()
    lifecycle = project.lifecycle(docker_client)
    report = lifecycle.up(timeout=UP_TIMEOUT_S)
    assert report.plan.action is UpAction.START
    replicas = {r.replica for r in report.smoke}
    assert len(replicas) == 2 and all(r.ok for r in report.smoke)
    document = lifecycle.status().to_json()
    services = document["services"]
    assert sorted(s["replica"] for s in services) == [1, 2]
    assert all(s["state"] == "running" and s["models_ok"] is True for s in services)
    assert document["ok"], document
    rest_urls = {s["endpoints"]["rest"] for s in services}
    assert rest_urls == {
        f"http://127.0.0.1:{project.rest_port}",
        f"http://127.0.0.1:{project.rest_port + 1}",
    }
    for url in rest_urls:
        rest = RestClient(url, timeout=15)
        try:
            answer = rest.predict(ModelRef("half_plus_two"), {"instances": [2.0]})
        finally:
            rest.close()
        assert answer == {"predictions": [3.0]}
    second = lifecycle.up(timeout=UP_TIMEOUT_S)
    assert second.plan.action is UpAction.NOOP


def test_corrupt_model_at_first_start_degrades_then_reloads_once_fixed(
    fresh: Project, docker_client: docker.DockerClient, repository: Path
) -> None:
    """A corrupt half_plus_three/1 at the FIRST start: `up` fails with its error, the server runs
    without it (status: END with the error; half_plus_two answers); once a good version is
    written, the next `up` hot-reloads it without restarting the container and all is AVAILABLE."""
    broken = fresh.root / "models" / "half_plus_three" / "1"
    shutil.rmtree(broken)
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    _open_up(broken)
    spec_before = fresh.spec_path.read_text()
    lifecycle = fresh.lifecycle(docker_client)
    with pytest.raises(LoadFailed) as caught:
        lifecycle.up(timeout=UP_TIMEOUT_S)
    assert [f[:2] for f in caught.value.failures] == [("half_plus_three", 1)]
    text = str(caught.value)
    assert "model half_plus_three version 1:" in text and "still serving: half_plus_two" in text
    assert "hot reload" in text
    assert fresh.spec_path.read_text() == spec_before, "the spec is never changed"
    assert 'name: "half_plus_three"' not in (fresh.root / "config" / "models.config").read_text()
    document = lifecycle.status().to_json()
    three = next(m for m in document["models"] if m["name"] == "half_plus_three")
    assert three["versions"][0]["state"] == "END", three
    assert three["versions"][0]["error"]["message"] == caught.value.failures[0][2].split(": ", 1)[1]
    two = next(m for m in document["models"] if m["name"] == "half_plus_two")
    assert two["ok"] and not document["ok"]
    rest = fresh.rest()
    try:
        answer = rest.predict(ModelRef("half_plus_two", version=1), {"instances": [2.0]})
    finally:
        rest.close()
    assert answer == {"predictions": [3.0]}
    before = serving_container(docker_client, fresh)

    shutil.rmtree(broken)
    shutil.copytree(repository / "half_plus_three" / "1", broken)
    _open_up(broken)
    report = lifecycle.up(timeout=UP_TIMEOUT_S)
    assert report.plan.action is UpAction.RELOAD
    assert serving_container(docker_client, fresh) == before
    assert report.status.ok, report.status.to_json()
    after = lifecycle.status().to_json()
    states = {(m["name"], v["version"]): v["state"] for m in after["models"] for v in m["versions"]}
    assert set(states.values()) == {"AVAILABLE"} and ("half_plus_three", 1) in states
    assert not (fresh.root / "state" / "failed-models.json").exists()
