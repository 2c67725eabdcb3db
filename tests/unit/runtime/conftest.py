"""Fixtures for the modelserver unit tests: tiny SavedModels built once, an in-process server.

Models (built with TensorFlow into a session-wide directory, copied where a test needs them):
``v1``: serving_default y = 0.5x + 2, regress_x_to_y and classify_x_to_y on tf.Examples;
``v2``: the same signatures with y = 0.5x + 3; ``corrupt``: a version directory whose
saved_model.pb is garbage.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelserver.flags import Flags, parse_flags
from modelserver.server import Endpoints, ModelServer


def _build_model(path: Path, offset: float) -> None:
    import tensorflow as tf

    class HalfPlus(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(offset)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: Any) -> Any:
            features = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return {"outputs": self.a * features["x"] + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: Any) -> Any:
            features = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return {"scores": self.a * features["x"] + self.b}

    module = HalfPlus()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.serve,
            "regress_x_to_y": module.regress,
            "classify_x_to_y": module.classify,
        },
    )


@dataclass(frozen=True)
class ModelFiles:
    v1: Path
    v2: Path
    corrupt: Path

    def place(self, base: Path, version: int, kind: str = "v1") -> Path:
        """Copy a built version into ``base/<version>`` (atomically: staged then renamed)."""
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".staging-{version}"
        shutil.copytree(getattr(self, kind), staging)
        target = base / str(version)
        staging.rename(target)
        return target


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    root = tmp_path_factory.mktemp("built-models")
    _build_model(root / "v1", 2.0)
    _build_model(root / "v2", 3.0)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"\x08\xff\xff garbage, not a SavedModel")
    return ModelFiles(root / "v1", root / "v2", corrupt)


class RunningServer:
    """A ModelServer on 127.0.0.1 with ephemeral ports, its event loop in a thread."""

    def __init__(self, flags: Flags) -> None:
        self.flags = flags
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.server = ModelServer(flags, host="127.0.0.1", grpc_port=0, rest_port=0)
            self.endpoints: Endpoints = self._run(self.server.start(), timeout=120)
        except BaseException:
            self._close_loop()
            raise
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.endpoints.grpc_port}")

    def _run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def rest_port(self) -> int:
        assert self.endpoints.rest_port is not None
        return self.endpoints.rest_port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=30)
        try:
            data = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, data = self.request("GET", path)
        return status, json.loads(data)

    def post_json(self, path: str, document: Any) -> tuple[int, Any]:
        status, data = self.request("POST", path, json.dumps(document))
        return status, json.loads(data)

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.stop(grace=1))
        self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def start_server(*args: str) -> RunningServer:
    return RunningServer(parse_flags(["--max_num_load_retries=0", *args]))


@pytest.fixture
def server_factory() -> Iterator[Any]:
    """Start servers with flags; every one is stopped after the test."""
    started: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        server = start_server(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
