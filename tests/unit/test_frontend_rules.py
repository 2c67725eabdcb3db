"""Spec rules of the front door: TLS files, the API keys file and ports, each with where it is."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.unit.specfixtures import Project, only, valid_spec
from tfstack.errors import SpecError, SpecProblem
from tfstack.stack.lifecycle import Lifecycle

GOOD_KEY = "k" * 24


@pytest.fixture
def project(tmp_path: Path) -> Project:
    (tmp_path / "config").mkdir()
    return Project(tmp_path).with_models()


def pem_pair(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed EC certificate and its unencrypted key, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def with_door(project: Project, **frontend: Any) -> list[SpecProblem]:
    """Problems of the valid spec with replicas: 2 (door on) and this frontend section."""
    spec = valid_spec()
    spec["serving"]["replicas"] = 2
    spec["frontend"] = frontend
    return project.problems(spec)


def line_of(project: Project, text: str) -> int:
    """1-based line of the spec file holding ``text``."""
    lines = project.spec.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def test_matching_pem_files_and_a_good_keys_file_pass(project: Project) -> None:
    """A real certificate with its key and a file of one plain and one hashed key: no problem."""
    cert, key = pem_pair(project.root / "config")
    keys = project.root / "config" / "keys"
    keys.write_text(f"# team A\n{GOOD_KEY}\n\nsha256:{hashlib.sha256(b'x' * 20).hexdigest()}\n")
    problems = with_door(
        project, tls={"cert_file": cert.name, "key_file": key.name}, auth={"api_keys_file": "keys"}
    )
    assert problems == []


def test_missing_tls_certificate_names_spec_line_and_yaml_path(project: Project) -> None:
    """A cert_file that does not exist: the spec's file, the line of cert_file and its path."""
    _, key = pem_pair(project.root / "config")
    problem = only(with_door(project, tls={"cert_file": "nope.crt", "key_file": key.name}))
    assert problem.yaml_path == "frontend.tls.cert_file"
    assert problem.file == str(project.spec)
    assert problem.line == line_of(project, "cert_file")
    assert "does not exist" in problem.message and "nope.crt" in problem.message


def test_a_certificate_file_without_a_certificate_is_refused(project: Project) -> None:
    """A cert_file holding a key (not a certificate) names the PEM block it lacks."""
    _, key = pem_pair(project.root / "config")
    problem = only(with_door(project, tls={"cert_file": key.name, "key_file": key.name}))
    assert problem.yaml_path == "frontend.tls.cert_file"
    assert "holds no PEM certificate" in problem.message
    assert problem.line == line_of(project, "cert_file")


def test_a_key_file_without_a_key_is_refused_without_quoting_it(project: Project) -> None:
    """A key_file holding a certificate is refused; the message quotes no file content."""
    cert, _ = pem_pair(project.root / "config")
    problem = only(with_door(project, tls={"cert_file": cert.name, "key_file": cert.name}))
    assert problem.yaml_path == "frontend.tls.key_file"
    assert "holds no PEM private key" in problem.message
    assert "BEGIN CERTIFICATE-----\n" not in str(problem)


def test_a_key_of_another_certificate_is_refused(project: Project) -> None:
    """Certificate and key from two different pairs do not match."""
    cert, _ = pem_pair(project.root / "config", "one")
    _, key = pem_pair(project.root / "config", "two")
    problem = only(with_door(project, tls={"cert_file": cert.name, "key_file": key.name}))
    assert problem.yaml_path == "frontend.tls.key_file" and "does not match" in problem.message


def test_an_empty_keys_file_is_refused(project: Project) -> None:
    """A keys file with only comments and blank lines guards nothing."""
    (project.root / "config" / "keys").write_text("# nobody yet\n\n")
    problem = only(with_door(project, auth={"api_keys_file": "keys"}))
    assert problem.yaml_path == "frontend.auth.api_keys_file"
    assert problem.line == line_of(project, "api_keys_file")
    assert "holds no key" in problem.message


def test_a_bad_key_line_names_the_keys_file_and_its_line_but_not_the_key(
    project: Project,
) -> None:
    """A too-short key on line 3 of the keys file: that file and line, the YAML path, no key."""
    keys = project.root / "config" / "keys"
    keys.write_text(f"{GOOD_KEY}\n# comment\nshort-secret\n")
    problem = only(with_door(project, auth={"api_keys_file": "keys"}))
    assert (problem.file, problem.line, problem.yaml_path) == (
        str(keys),
        3,
        "frontend.auth.api_keys_file",
    )
    assert "at least 16 characters" in problem.message
    assert "short-secret" not in str(problem)


def test_a_repeated_key_and_a_malformed_hash_are_refused(project: Project) -> None:
    """Each line's own problem: a repeat names the first line, a hash must be 64 hex digits."""
    (project.root / "config" / "keys").write_text(f"{GOOD_KEY}\n{GOOD_KEY}\nsha256:abc\n")
    problems = with_door(project, auth={"api_keys_file": "keys"})
    assert [(p.line, p.message) for p in problems] == [
        (2, "line 2 repeats the key of line 1"),
        (3, "line 3: a hashed key must be 'sha256:' followed by 64 lower-case hex digits"),
    ]


def test_stats_port_clashing_with_the_doors_listener_is_refused(project: Project) -> None:
    """The stats port cannot be the port the door's REST or gRPC listener uses inside."""
    problem = only(with_door(project, stats_port=8501))
    assert problem.yaml_path == "frontend.stats_port"
    assert problem.line == line_of(project, "stats_port")
    assert "REST listener" in problem.message


def test_tls_or_auth_with_the_door_off_is_refused(project: Project) -> None:
    """Secrets for a door that is not there are a mistake, not silently ignored."""
    (project.root / "config" / "keys").write_text(GOOD_KEY + "\n")
    spec = valid_spec()
    spec["frontend"] = {"auth": {"api_keys_file": "keys"}}
    problem = only(project.problems(spec))
    assert problem.yaml_path == "frontend.auth"
    assert "front door is off" in problem.message and "serving.replicas: 1" in problem.message


def test_a_bad_tls_file_stops_up_before_anything_is_written_or_started(
    project: Project,
) -> None:
    """up validates before rendering: a missing TLS file is a SpecError; nothing is rendered and
    the engine (connected first, on purpose) is never asked to do anything."""
    spec = valid_spec()
    spec["serving"]["replicas"] = 2
    spec["frontend"] = {"tls": {"cert_file": "missing.crt", "key_file": "missing.key"}}
    project.write(spec)

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine must not be used ({name})")

    def no_engine() -> Any:
        return Untouchable()

    lifecycle = Lifecycle(
        project.spec, root=project.root, source_root=project.root / "checkout", engine=no_engine
    )
    with pytest.raises(SpecError) as caught:
        lifecycle.up()
    assert {p.yaml_path for p in caught.value.problems} == {
        "frontend.tls.cert_file",
        "frontend.tls.key_file",
    }
    assert not (project.root / "compose").exists()
    assert not (project.root / "config" / "frontend").exists()
