"""The tensorflow_model_server executable: exit codes, messages, ready lines, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ModelFiles

pytestmark = pytest.mark.slow

SERVER = [sys.executable, "-c", "import sys; from modelserver.main import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MODEL_BASE_PATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
        check=False,
    )


def test_bad_config_file_exits_with_the_parse_error(tmp_path: Path) -> None:
    """A config file that does not parse prints protobuf's error and exits non-zero."""
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'x' bogus: 1 } }")
    result = run(f"--model_config_file={config}", "--port=0")
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr
    assert "Failed to start server. Error:" in result.stdout


def test_failing_model_exits_after_retries(models: ModelFiles, tmp_path: Path) -> None:
    """A model whose only version cannot load ends startup with `Failed to start server`."""
    models.place(tmp_path / "m", 1, "corrupt")
    result = run(
        "--model_name=m",
        f"--model_base_path={tmp_path / 'm'}",
        "--max_num_load_retries=0",
        f"--port={free_port()}",
        "--unknown_flag=1",
    )
    assert result.returncode == 255
    assert "unknown argument: --unknown_flag=1" in result.stderr
    assert "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available" in (
        result.stdout
    )


def test_serves_then_stops_on_sigterm(models: ModelFiles, tmp_path: Path) -> None:
    """Ready lines appear once the model is AVAILABLE; SIGTERM shuts down cleanly with 0."""
    models.place(tmp_path / "hp", 1)
    grpc_port, rest_port = free_port(), free_port()
    env = environment()
    env.update(MODEL_NAME="hp", MODEL_BASE_PATH=str(tmp_path))
    process = subprocess.Popen(
        [*SERVER, f"--port={grpc_port}", f"--rest_api_port={rest_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        url = f"http://127.0.0.1:{rest_port}/v1/models/hp:predict"
        while True:
            assert process.poll() is None, process.communicate()
            try:
                request = urllib.request.Request(url, data=b'{"instances": [2.0]}')
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert json.loads(response.read()) == {"predictions": [3.0]}
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0
        assert f"Running gRPC ModelServer at 0.0.0.0:{grpc_port} ..." in err
        assert f"Exporting HTTP/REST API at:localhost:{rest_port} ..." in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
