"""The front door (#11) on real containers: replicas: 2 behind HAProxy, TLS and API keys.

- Every TF Serving contract case of ``test_contract.py`` (REST and gRPC: labels, versions,
  errors) runs through the door: the contract tests are imported here and their ``target``
  fixture is this module's door endpoint.
- Both replicas receive REST and gRPC traffic (the door's own stats).
- Under ~100 req/s of REST + gRPC load (bounded, loopback), a replica killed twice loses no
  request. On this engine ``docker kill`` marks a container as stopped on purpose, so no restart
  policy brings it back (Docker's documented behaviour); a crash is the server's host process
  dying, which ``unless-stopped`` does restart. So the comeback is proved with SIGKILL of the
  host process, 0 failed requests with both kinds of kill, and the stopped replica is started
  again by ``up``.
- TLS and API keys: missing key, wrong key, right key (plain and hashed), plain text to a TLS
  port, for REST and gRPC.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.test_contract import (
    Endpoint,
    test_grpc_outputs_in_float_val_from_a_zero_padded_version,
    test_grpc_predict_contract,
    test_grpc_unknown_model_is_not_found,
    test_grpc_wrong_input_dtype_is_refused,
    test_rest_contract,
)
from tests.integration.test_contract import model_root as contract_model_root
from tfstack.serving.client import GrpcClient, ModelRef, RestClient, ServingRequestError
from tfstack.serving.door import DoorStatus, wait_in_rotation
from tfstack.serving.tensors import Tensor, to_tensor_proto
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.plan import load
from tfstack.stack.predict import predict

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
__all__ = [  # the contract cases, collected here against the door
    "test_grpc_outputs_in_float_val_from_a_zero_padded_version",
    "test_grpc_predict_contract",
    "test_grpc_unknown_model_is_not_found",
    "test_grpc_wrong_input_dtype_is_refused",
    "test_rest_contract",
]
model_root = contract_model_root
GOOD_KEY = "door-key-" + "a1" * 12
HASHED_ONLY_KEY = "hashed-key-" + "b2" * 12
LOAD_RATE = 100.0  # requests per second, REST and gRPC together
HALF = ModelRef("half_plus_two")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DoorProject:
    """A temp project serving the contract's models through the door."""

    def __init__(self, models: Path, image: str, frontend: dict[str, Any], replicas: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tfstack-it-door-"))
        self.root.chmod(0o755)
        (self.root / "config").mkdir(mode=0o755)
        self.name = f"tfstack-it-door-{os.urandom(4).hex()}"
        self.rest_port, self.grpc_port = free_port(), free_port()
        spec = {
            "format": 1,
            "project": self.name,
            "model_repository": str(models),
            "models": [
                {"name": "half_plus_two", "labels": {"stable": 1}},
                {"name": "half_plus_three"},
                {"name": "upstream_half_plus_two"},
            ],
            "serving": {
                "image": image,
                "rest_port": self.rest_port,
                "grpc_port": self.grpc_port,
                "replicas": replicas,
                "max_load_retries": 0,
            },
            "frontend": frontend,
        }
        self.spec_path = self.root / "config" / "stack.yaml"
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def lifecycle(self, client: docker.DockerClient) -> Lifecycle:
        return Lifecycle(self.spec_path, source_root=ROOT, client=client)

    def door(self, client: docker.DockerClient) -> DoorStatus:
        lifecycle = self.lifecycle(client)
        loaded = load(self.spec_path)
        status = lifecycle.door_status(loaded, lifecycle.stack(loaded.spec))
        assert status is not None
        return status

    def replicas(self, client: docker.DockerClient) -> list[Any]:
        found = client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.name}",
                    "com.docker.compose.service=serving",
                ]
            },
        )
        return sorted(found, key=lambda c: c.name)

    def remove(self, client: docker.DockerClient) -> None:
        try:
            self.lifecycle(client).down()
        finally:
            for container in client.containers.list(
                all=True, filters={"label": f"com.docker.compose.project={self.name}"}
            ):
                container.remove(force=True)
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def door_stack(
    docker_client: docker.DockerClient, runtime_image: Any, model_root: Path
) -> Iterator[DoorProject]:
    """replicas: 2 behind the door (auto on), the contract's models."""
    project = DoorProject(model_root / "models", runtime_image.id, {"health_interval_ms": 500}, 2)
    try:
        project.lifecycle(docker_client).up(timeout=240)
        yield project
    finally:
        project.remove(docker_client)


@pytest.fixture(scope="module")
def target(door_stack: DoorProject) -> Endpoint:
    """The contract tests' server: the door's published ports."""
    return Endpoint(door_stack.rest_port, door_stack.grpc_port)


def test_both_replicas_receive_rest_and_grpc_traffic(
    door_stack: DoorProject, docker_client: docker.DockerClient
) -> None:
    """After 20 REST and 20 gRPC predicts every replica slot of both backends has served some."""
    with RestClient(f"http://127.0.0.1:{door_stack.rest_port}", timeout=15) as rest:
        for _ in range(20):
            assert rest.predict(HALF, {"instances": [1.0]}) == {"predictions": [2.5]}
    with GrpcClient(f"127.0.0.1:{door_stack.grpc_port}", timeout=15) as client:
        for _ in range(20):
            assert client.predict_json(HALF, {"instances": [1.0]}) == {"predictions": [2.5]}
    status = door_stack.door(docker_client)
    names = {c.name for c in door_stack.replicas(docker_client)}
    for backend in ("rest", "grpc"):
        servers = [s for s in status.servers if s.backend == backend]
        assert {s.container for s in servers} == names, status.to_json()
        assert all(s.in_rotation and s.requests > 0 for s in servers), status.to_json()


class Load:
    """~LOAD_RATE predicts per second, half REST half gRPC, from 4 threads; failures kept."""

    def __init__(self, project: DoorProject) -> None:
        self.project = project
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(kind,), daemon=True)
            for kind in ("rest", "rest", "grpc", "grpc")
        ]

    def _run(self, kind: str) -> None:
        interval = len(self.threads) / LOAD_RATE
        rest = RestClient(f"http://127.0.0.1:{self.project.rest_port}", timeout=15)
        grpc_client = GrpcClient(f"127.0.0.1:{self.project.grpc_port}", timeout=15)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    if kind == "rest":
                        answer = rest.predict(HALF, {"instances": [2.0]})
                    else:
                        answer = grpc_client.predict_json(HALF, {"instances": [2.0]})
                    assert answer == {"predictions": [3.0]}, answer
                    with self.lock:
                        self.ok += 1
                except Exception as exc:  # every failure counts, whatever it is
                    with self.lock:
                        self.failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            rest.close()
            grpc_client.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_killing_replicas_under_load_loses_no_request(
    door_stack: DoorProject, docker_client: docker.DockerClient
) -> None:
    """~100 req/s REST+gRPC through the door: a replica's host process SIGKILLed (a crash: the
    restart policy brings it back into rotation) and then `docker kill -s KILL` of the other (a
    deliberate stop: the engine does not restart it) lose no request; `up` starts it again."""
    first, second = door_stack.replicas(docker_client)
    with Load(door_stack) as load:
        time.sleep(2)
        first.reload()
        os.kill(int(first.attrs["State"]["Pid"]), signal.SIGKILL)
        time.sleep(2)
        # Back: restarted by unless-stopped, models loaded, /readyz 200, in both backends.
        wait_in_rotation(lambda: door_stack.door(docker_client), 2, timeout=120)
        first.reload()
        assert first.attrs["RestartCount"] >= 1
        time.sleep(2)
        second.kill(signal="SIGKILL")
        time.sleep(4)
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 300, f"only {load.ok} requests in the window"
    second.reload()
    assert second.status == "exited"  # docker kill: stopped on purpose, not restarted
    door_stack.lifecycle(docker_client).up(timeout=240)
    status = wait_in_rotation(lambda: door_stack.door(docker_client), 2, timeout=120)
    assert len(status.in_rotation("grpc")) == 2


# ----------------------------------------------------------------------------- TLS and keys


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfstack door test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "door.crt", directory / "door.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def secure_stack(
    docker_client: docker.DockerClient, runtime_image: Any, model_root: Path
) -> Iterator[tuple[DoorProject, Path]]:
    """One replica behind a door with TLS on both ports and API keys (one plain, one hashed)."""
    secrets = Path(tempfile.mkdtemp(prefix="tfstack-it-door-secrets-"))
    secrets.chmod(0o755)
    cert, key = certificate(secrets)
    keys = secrets / "api_keys"
    hashed = hashlib.sha256(HASHED_ONLY_KEY.encode()).hexdigest()
    keys.write_text(f"# test keys\n{GOOD_KEY}\nsha256:{hashed}\n")
    keys.chmod(0o600)
    # The door runs as serving.user (1000:1000): the operator's uid owns the secret files.
    for path in (cert, key, keys):
        os.chown(path, 1000, 1000)
    frontend = {
        "enabled": True,
        "tls": {"cert_file": str(cert), "key_file": str(key)},
        "auth": {"api_keys_file": str(keys)},
    }
    project = DoorProject(model_root / "models", runtime_image.id, frontend, 1)
    try:
        project.lifecycle(docker_client).up(timeout=240)
        rendered = "".join(
            p.read_text() for p in project.root.rglob("*") if p.is_file() and p.suffix != ".pem"
        )
        assert GOOD_KEY not in rendered and hashed not in rendered
        yield project, cert
    finally:
        project.remove(docker_client)
        shutil.rmtree(secrets, ignore_errors=True)


def https(project: DoorProject, cert: Path, headers: dict[str, str]) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(cert))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", project.rest_port, context=context, timeout=15
    )
    try:
        connection.request(
            "POST",
            "/v1/models/half_plus_two:predict",
            body=json.dumps({"instances": [1.0]}),
            headers=headers,
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_rest_needs_a_known_api_key_over_tls(secure_stack: tuple[DoorProject, Path]) -> None:
    """No key and a wrong key get 401 with a Bearer challenge; the plain and the hashed key 200."""
    project, cert = secure_stack
    assert https(project, cert, {})[0] == 401
    assert https(project, cert, {"Authorization": "Bearer wrong-key-0123456789abcdef"})[0] == 401
    assert https(project, cert, {"Authorization": GOOD_KEY})[0] == 401  # no Bearer scheme
    status, body = https(project, cert, {"Authorization": f"Bearer {GOOD_KEY}"})
    assert (status, json.loads(body)) == (200, {"predictions": [2.5]})
    assert https(project, cert, {"Authorization": f"Bearer {HASHED_ONLY_KEY}"})[0] == 200
    hashed_line = "sha256:" + hashlib.sha256(HASHED_ONLY_KEY.encode()).hexdigest()
    assert https(project, cert, {"Authorization": f"Bearer {hashed_line}"})[0] == 401


def test_plain_http_to_the_tls_port_is_refused(secure_stack: tuple[DoorProject, Path]) -> None:
    """A plain-text request to the TLS REST port gets no HTTP answer from the models."""
    project, _ = secure_stack
    connection = http.client.HTTPConnection("127.0.0.1", project.rest_port, timeout=15)
    try:
        with pytest.raises((OSError, http.client.HTTPException)):
            connection.request("GET", "/v1/models/half_plus_two")
            response = connection.getresponse()
            pytest.fail(f"plain HTTP answered {response.status}")  # pragma: no cover
    finally:
        connection.close()


def grpc_predict(project: DoorProject, cert: Path | None, key: str | None) -> Any:
    x = to_tensor_proto(Tensor("DT_FLOAT", (1,), (1.0,)))  # loads the serving protos
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    target = f"127.0.0.1:{project.grpc_port}"
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(cert.read_bytes()))
        if cert is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(x)
        metadata = [("authorization", f"Bearer {key}")] if key is not None else None
        return stub.Predict(request, 15.0, metadata=metadata)


def test_grpc_needs_a_known_api_key_over_tls(secure_stack: tuple[DoorProject, Path]) -> None:
    """gRPC: no key and a wrong key are UNAUTHENTICATED; the right key predicts; a plain-text
    channel to the TLS port is UNAVAILABLE."""
    project, cert = secure_stack
    for key in (None, "wrong-key-0123456789abcdef"):
        with pytest.raises(grpc.RpcError) as raised:
            grpc_predict(project, cert, key)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, key
    response = grpc_predict(project, cert, GOOD_KEY)
    assert response.model_spec.name == "half_plus_two" and "y" in response.outputs
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(project, None, GOOD_KEY)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_status_shows_the_door_and_asks_each_replica_behind_it(
    door_stack: DoorProject, docker_client: docker.DockerClient
) -> None:
    """status: the frontend object has both replicas in rotation with their requests; every
    replica (publishing nothing) is asked at its network address and is ready; the stack is ok."""
    with RestClient(f"http://127.0.0.1:{door_stack.rest_port}") as rest:
        for _ in range(6):
            rest.predict(ModelRef("half_plus_two"), {"instances": [1.0]})
    status = door_stack.lifecycle(docker_client).status()
    document = status.to_json()
    door = document["frontend"]
    names = sorted(c.name for c in door_stack.replicas(docker_client))
    assert door["ok"] and door["error"] is None, door
    assert sorted(door["in_rotation"]["rest"]) == names == sorted(door["in_rotation"]["grpc"])
    assert sum(s["requests"] for s in door["servers"] if s["backend"] == "rest") >= 6
    assert [s["models_ok"] for s in document["services"]] == [True, True], document["services"]
    assert status.ok


def test_predict_through_a_tls_door_sends_the_files_key(
    secure_stack: tuple[DoorProject, Path],
) -> None:
    """predict (REST and gRPC) through TLS + keys: the keys file's plain key, the spec's cert."""
    project, _ = secure_stack
    body = {"instances": [1.0, 2.0]}
    for grpc_call in (False, True):
        answer = predict(project.spec_path, ModelRef("half_plus_two"), body, grpc=grpc_call)
        assert answer["predictions"] == [2.5, 3.0], grpc_call
    with pytest.raises(ServingRequestError, match="refused the API key"):
        predict(project.spec_path, ModelRef("half_plus_two"), body, api_key="wrong-key-1234")


def test_status_through_a_tls_door_with_keys_sees_the_models(
    secure_stack: tuple[DoorProject, Path], docker_client: docker.DockerClient
) -> None:
    """status asks the models through the door over TLS with the keys file's key: every model ok,
    the door ok, the stack ok (a plain, keyless client would get no answer / 401)."""
    project, _ = secure_stack
    status = project.lifecycle(docker_client).status()
    document = status.to_json()
    assert document["server_error"] is None, document
    assert all(m["ok"] for m in document["models"]), document["models"]
    assert document["frontend"]["ok"], document["frontend"]
    assert status.ok
