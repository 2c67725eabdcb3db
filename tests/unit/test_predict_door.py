"""predict through the door: Bearer key from the keys file or --api-key, TLS checked with a CA."""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tfstack.serving.door
import tfstack.stack.predict
from tfstack.core.certs import apply_certs, plan_certs
from tfstack.errors import StackError, UsageError
from tfstack.serving.client import GrpcClient, ModelRef
from tfstack.serving.door import door_access, first_plain_key
from tfstack.spec.frontend import FrontendSpec
from tfstack.stack.predict import predict

KEY = "plain-key-0123456789abcdef"
HASHED = "sha256:" + hashlib.sha256(b"other-key").hexdigest()


class Door(BaseHTTPRequestHandler):
    """A stand-in for the door: 401 without the right Bearer key, else a predict answer."""

    seen: list[str | None] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.headers.get("Authorization") == f"Bearer {KEY}"
        body = json.dumps({"predictions": [2.5]} if ok else {"error": "unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def door(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An https server on 127.0.0.1 with a certificate from `invoke certs`; (port, cert dir)."""
    certs = tmp_path / "certs"
    apply_certs(plan_certs(certs, ()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.pem", certs / "server-key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Door)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Door.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], certs
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fake_spec(port: int, *, replicas: int = 2, **frontend: Any) -> Any:
    serving = SimpleNamespace(
        replicas=replicas, bind_address="127.0.0.1", rest_port=port, grpc_port=port + 1
    )
    return SimpleNamespace(serving=serving, frontend=FrontendSpec(**frontend))


def keys_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "api-keys"
    path.write_text("\n".join(lines) + "\n")
    return path


def use_spec(monkeypatch: pytest.MonkeyPatch, spec: Any) -> None:
    monkeypatch.setattr(tfstack.stack.predict, "load_spec", lambda *a, **k: spec)


def test_predict_sends_the_first_plain_key_over_tls_checked_with_the_specs_cert(
    door: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys file: comments and hashes skipped, the first plain key sent as Bearer over https."""
    port, certs = door
    keys = keys_file(tmp_path, "# operators", HASHED, KEY, "second-key-0123456789")
    spec = fake_spec(
        port,
        tls={"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server-key.pem")},
        auth={"api_keys_file": str(keys)},
    )
    use_spec(monkeypatch, spec)
    answer = predict(tmp_path / "stack.yaml", ModelRef("m"), {"instances": [1.0]}, root=tmp_path)
    assert answer == {"predictions": [2.5]}
    assert Door.seen == [f"Bearer {KEY}"]
    access = door_access(spec, tmp_path / "stack.yaml")
    assert access.rest_url == f"https://127.0.0.1:{port}"
    assert KEY not in repr(access), "the key stays out of reprs and logs"


def test_api_key_option_wins_and_a_wrong_key_says_what_to_do(
    door: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--api-key replaces the file's key; a 401 from the door names --api-key, not the key."""
    port, certs = door
    spec = fake_spec(
        port,
        tls={"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server-key.pem")},
        auth={"api_keys_file": str(keys_file(tmp_path, KEY))},
    )
    use_spec(monkeypatch, spec)
    with pytest.raises(StackError) as raised:
        predict(tmp_path / "s.yaml", ModelRef("m"), {}, root=tmp_path, api_key="wrong-key-xyz")
    assert Door.seen == ["Bearer wrong-key-xyz"]
    assert "HTTP 401" in str(raised.value) and "refused the API key" in str(raised.value)
    assert "--api-key" in str(raised.value) and "wrong-key-xyz" not in str(raised.value)


def test_a_certificate_from_another_ca_fails_with_a_ca_file_hint(
    door: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ca-file naming a CA that did not sign the door's certificate: TLS error, no request."""
    port, certs = door
    other = tmp_path / "other"
    apply_certs(plan_certs(other, ()))
    spec = fake_spec(
        port,
        tls={"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server-key.pem")},
    )
    use_spec(monkeypatch, spec)
    with pytest.raises(StackError, match=r"TLS with https://127\.0\.0\.1:\d+ failed") as raised:
        predict(tmp_path / "s.yaml", ModelRef("m"), {}, root=tmp_path, ca_file=other / "ca.pem")
    assert "--ca-file" in str(raised.value)
    assert Door.seen == []
    answer = predict(
        tmp_path / "s.yaml",
        ModelRef("m"),
        {},
        root=tmp_path,
        ca_file=certs / "ca.pem",
        api_key=KEY,
    )
    assert answer == {"predictions": [2.5]}, "the right CA file verifies the door"


def test_a_keys_file_of_hashes_only_asks_for_api_key(tmp_path: Path) -> None:
    """Hashed-only keys file: a clear error telling the user to pass --api-key."""
    path = keys_file(tmp_path, "# hashed", HASHED)
    with pytest.raises(UsageError, match="holds only hashed keys") as raised:
        first_plain_key(path)
    assert "--api-key KEY" in str(raised.value)
    spec = fake_spec(18501, auth={"api_keys_file": str(path)})
    with pytest.raises(UsageError):
        door_access(spec, tmp_path / "s.yaml")
    assert door_access(spec, tmp_path / "s.yaml", api_key=KEY).headers() == {
        "Authorization": f"Bearer {KEY}"
    }
    with pytest.raises(UsageError, match="cannot read it"):
        first_plain_key(tmp_path / "missing")


def test_ca_file_without_a_door_or_without_tls_is_refused(tmp_path: Path) -> None:
    """--ca-file with no door, or a door without TLS: UsageError; no door and no options: http."""
    ca = tmp_path / "ca.pem"
    with pytest.raises(UsageError, match="has no front door"):
        door_access(fake_spec(18501, replicas=1), tmp_path / "s.yaml", ca_file=ca)
    with pytest.raises(UsageError, match="has no TLS"):
        door_access(fake_spec(18501), tmp_path / "s.yaml", ca_file=ca)
    plain = door_access(fake_spec(18501, replicas=1), tmp_path / "s.yaml")
    assert (plain.rest_url, plain.headers()) == ("http://127.0.0.1:18501", {})


def test_grpc_through_the_door_uses_tls_roots_and_authorization_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC: the channel gets the CA file's PEM as roots; every call carries authorization."""
    made: dict[str, Any] = {}

    def fake_client(target: str, **kwargs: Any) -> Any:
        made.update(kwargs, target=target)
        return SimpleNamespace()

    monkeypatch.setattr(tfstack.serving.door, "GrpcClient", fake_client)
    certs = tmp_path / "certs"
    apply_certs(plan_certs(certs, ()))
    spec = fake_spec(
        18501,
        tls={"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server-key.pem")},
        auth={"api_keys_file": str(keys_file(tmp_path, KEY))},
    )
    door_access(spec, tmp_path / "s.yaml").grpc()
    assert made == {
        "target": "127.0.0.1:18502",
        "root_certificates": (certs / "server.pem").read_bytes(),
        "metadata": [("authorization", f"Bearer {KEY}")],
    }
    sent: dict[str, Any] = {}

    def method(request: object, **kwargs: Any) -> str:
        sent.update(kwargs)
        return "answer"

    client = GrpcClient("127.0.0.1:1", metadata=[("authorization", f"Bearer {KEY}")])
    try:
        assert client._call("Predict", method, object(), 2.0) == "answer"
    finally:
        client.close()
    assert sent == {"timeout": 2.0, "metadata": (("authorization", f"Bearer {KEY}"),)}
