"""The servers ``bench serve`` measures: the checkout's modelserver as a local process, or an image
in a temporary container (:class:`tfstack.docker.containers.ServingContainer`), each on one core
(``taskset`` or the container's cpuset) or on all; their processes' RSS; waiting for their models.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker.errors

from tfstack.bench.serve_load import LOOPBACK
from tfstack.core.labels import LABEL_BENCH
from tfstack.docker.containers import GRPC_PORT, REST_PORT, ServingContainer, model_config_text
from tfstack.errors import StackError

STARTUP_TIMEOUT_S = 180.0
BATCH_CLIENTS = 32
BATCH_TIMEOUT_MICROS = 5000
BATCH_THREADS = 1
BENCH_LABELS = {LABEL_BENCH: "serve"}
"""On every container of this benchmark: the sweep at the end (and after an interrupted run)
selects on it."""


class Server(Protocol):
    """A server under measurement: its name, its ports on 127.0.0.1 and its processes."""

    name: str
    rest_port: int
    grpc_port: int

    def pids(self) -> list[int]: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...

    def log_tail(self) -> str: ...


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


BATCHING_PARAMETERS = (
    f"max_batch_size {{ value: {BATCH_CLIENTS} }}\n"
    f"batch_timeout_micros {{ value: {BATCH_TIMEOUT_MICROS} }}\n"
    f"num_batch_threads {{ value: {BATCH_THREADS} }}\n"
    "max_enqueued_batches { value: 100 }\n"
)


@dataclass
class LocalServer:
    """The checkout's modelserver as a separate process (``taskset`` when ``cpus`` is given)."""

    name: str
    process: subprocess.Popen[bytes]
    rest_port: int
    grpc_port: int
    log_path: Path

    def pids(self) -> list[int]:
        return _process_tree(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def _server_command() -> list[str]:
    executable = Path(sys.executable).parent / "tensorflow_model_server"
    if executable.exists():
        return [str(executable)]
    return [sys.executable, "-c", "from modelserver.main import main; raise SystemExit(main())"]


def start_local(
    workdir: Path, models_root: Path, models: Sequence[str], *, cpus: str | None, batching: bool
) -> LocalServer:
    tag = "-".join(models) + ("-batching" if batching else "")
    config = workdir / f"{tag}.config"
    config.write_text(
        model_config_text({name: f"{models_root}/{name}" for name in models}), encoding="utf-8"
    )
    rest, grpc_port = _free_port(), _free_port()
    command = [
        *_server_command(),
        f"--port={grpc_port}",
        f"--rest_api_port={rest}",
        f"--model_config_file={config}",
    ]
    if batching:
        params = workdir / "batching.config"
        params.write_text(BATCHING_PARAMETERS, encoding="utf-8")
        command += ["--enable_batching=true", f"--batching_parameters_file={params}"]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    log_path = workdir / f"{tag}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    where = "one core" if cpus else "all cores"
    return LocalServer(f"modelserver (local process, {where})", process, rest, grpc_port, log_path)


@dataclass
class ContainerServer:
    """An image's server in a :class:`ServingContainer` (ports on 127.0.0.1, models read-only)."""

    name: str
    container: ServingContainer
    rest_port: int
    grpc_port: int

    def pids(self) -> list[int]:
        container = self.container.get_wrapped_container()
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        return _process_tree(pid) if pid else []

    def stop(self) -> None:
        self.container.stop()  # a container already gone is fine; the label sweep catches the rest

    def log_tail(self) -> str:
        return "\n".join(self.container.log_tail())

    def alive(self) -> bool:
        try:
            return self.container.exit_state() is None
        except docker.errors.NotFound:
            return False


def start_container(
    image: str, models_root: Path, models: Sequence[str], *, cpus: str | None, batching: bool
) -> ContainerServer:
    """Start ``image`` serving ``models`` from ``models_root``; returns once they are AVAILABLE."""
    kwargs: dict[str, Any] = {"security_opt": ["no-new-privileges"]}
    if cpus is not None:
        kwargs["cpuset_cpus"] = cpus
    container = ServingContainer(
        image,
        models={name: models_root / name for name in models},
        batching=BATCHING_PARAMETERS if batching else None,
        labels=BENCH_LABELS,
        startup_timeout=STARTUP_TIMEOUT_S,
        **kwargs,
    )
    container.start()
    try:
        return ContainerServer(
            f"{image} ({'one core' if cpus else 'all cores'})",
            container,
            container.host_port(REST_PORT),
            container.host_port(GRPC_PORT),
        )
    except BaseException:
        container.stop()
        raise


def sweep_containers() -> None:
    """Remove every container this benchmark labelled (also those of an interrupted run)."""
    client = docker.from_env()
    try:
        selector = [f"{key}={value}" for key, value in BENCH_LABELS.items()]
        for container in client.containers.list(all=True, filters={"label": selector}):
            try:
                container.remove(force=True)
            except docker.errors.APIError:  # already gone, or its removal is under way
                continue
    finally:
        client.close()


def _process_tree(pid: int) -> list[int]:
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                found.extend(int(child) for child in children)
        except OSError:
            continue
    return found


def rss_mb(pids: Sequence[int]) -> float:
    """Resident set size of the processes, in MB (10^6 bytes, as targets.md)."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb * 1024 / 1e6


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def timed_post(
    port: int, path: str, body: bytes, timeout: float = 60.0
) -> tuple[int, bytes, float]:
    """POST on a fresh connection: status, body and milliseconds from request to response."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.connect()
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        return response.status, data, (time.perf_counter() - started) * 1000
    finally:
        connection.close()


def wait_available(server: Server, models: Sequence[str]) -> float:
    """Poll the REST status API until every model has an AVAILABLE version; returns the time."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(models)
    while pending:
        if time.monotonic() > deadline or not server.alive():
            raise StackError(
                f"{server.name}: models {', '.join(pending)} not AVAILABLE within "
                f"{STARTUP_TIMEOUT_S:.0f} s",
                hint=f"server output:\n{server.log_tail()}",
            )
        try:
            status, body = _get(server.rest_port, f"/v1/models/{pending[0]}")
        except OSError:
            time.sleep(0.05)
            continue
        if status == 200 and any(
            v.get("state") == "AVAILABLE" for v in json.loads(body)["model_version_status"]
        ):
            pending.pop(0)
        else:
            time.sleep(0.05)
    return time.monotonic()
