"""invoke certs: the development CA and server certificate (chain, names, keys, modes, reuse)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
import tasks
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from invoke.context import MockContext
from invoke.exceptions import Exit

from tfstack.core.certs import apply_certs, plan_certs, spec_lines
from tfstack.errors import TfstackError, UsageError


def load(directory: Path) -> tuple[x509.Certificate, x509.Certificate, object]:
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    server, chained = x509.load_pem_x509_certificates((directory / "server.pem").read_bytes())
    assert chained == ca, "server.pem is the leaf, then the CA"
    key = serialization.load_pem_private_key(
        (directory / "server-key.pem").read_bytes(), password=None
    )
    return ca, server, key


def test_server_certificate_chains_to_the_ca_and_names_every_host(tmp_path: Path) -> None:
    """server.pem is signed by ca.pem, for server auth, with DNS and IP SANs of --hosts."""
    plan = plan_certs(tmp_path / "certs", ["door.example,127.0.0.1", "localhost", "::1"])
    apply_certs(plan)
    ca, server, _ = load(tmp_path / "certs")
    server.verify_directly_issued_by(ca)  # raises when the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["door.example", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    now = dt.datetime.now(dt.UTC)
    assert server.not_valid_before_utc < now < server.not_valid_after_utc


def test_key_files_match_their_certificates_and_are_private(tmp_path: Path) -> None:
    """Each key matches its certificate; keys are 0600 and certificates 0644, whatever the umask."""
    old = os.umask(0o077)
    try:
        written = apply_certs(plan_certs(tmp_path, ()))
    finally:
        os.umask(old)
    assert [p.name for p in written] == ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem"]
    ca, server, key = load(tmp_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == server.public_key()
    ca_key = serialization.load_pem_private_key((tmp_path / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert ca_key.public_key() == ca.public_key()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
    }, "no temporary file is left behind either"


def test_default_hosts_are_the_loopback_names(tmp_path: Path) -> None:
    """Without --hosts: localhost, 127.0.0.1 and ::1."""
    plan = plan_certs(tmp_path, ())
    assert (plan.dns_names, plan.ip_addresses) == (("localhost",), ("127.0.0.1", "::1"))


def test_a_second_run_reuses_the_ca_and_issues_a_new_server_certificate(tmp_path: Path) -> None:
    """An existing CA is kept (clients keep trusting it); only server.pem/server-key.pem change."""
    apply_certs(plan_certs(tmp_path, ()))
    ca_before = (tmp_path / "ca.pem").read_bytes()
    key_before = (tmp_path / "server-key.pem").read_bytes()
    plan = plan_certs(tmp_path, ["other.example"])
    assert plan.reuse_ca
    written = apply_certs(plan)
    assert [p.name for p in written] == ["server.pem", "server-key.pem"]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "server-key.pem").read_bytes() != key_before
    ca, server, _ = load(tmp_path)
    server.verify_directly_issued_by(ca)


def test_an_incomplete_ca_and_a_bad_host_are_refused(tmp_path: Path) -> None:
    """ca.pem without ca-key.pem, and a host that is no name or address: errors that say what."""
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(TfstackError, match=r"ca\.pem exists without .*ca-key\.pem"):
        plan_certs(tmp_path, ())
    with pytest.raises(UsageError, match="'bad host!' is neither an IP address nor a DNS name"):
        plan_certs(tmp_path / "new", ["localhost,bad host!"])
    with pytest.raises(UsageError, match="names no host"):
        plan_certs(tmp_path / "new", [" , "])


def test_spec_lines_are_relative_to_the_spec_inside_the_project(tmp_path: Path) -> None:
    """The printed frontend.tls lines use spec-relative paths, absolute ones outside the project."""
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    inside = plan_certs(project / "state" / "certs", ())
    assert spec_lines(inside, project / "config") == [
        "frontend:",
        "  tls:",
        "    cert_file: ../state/certs/server.pem",
        "    key_file: ../state/certs/server-key.pem",
    ]
    outside = plan_certs(tmp_path / "elsewhere", ())
    assert spec_lines(outside, project / "config")[2] == (
        f"    cert_file: {tmp_path / 'elsewhere' / 'server.pem'}"
    )


def test_certs_task_prints_paths_and_spec_lines_never_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke certs` prints the files written and the spec lines; no key material."""
    tasks.certs(MockContext(), dir=str(tmp_path), hosts=["door.local"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"wrote {tmp_path / 'server-key.pem'}" in text
    assert f"--ca-file {tmp_path / 'ca.pem'}" in text
    assert "    key_file: " in text
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    with pytest.raises(Exit) as exc:
        tasks.certs(MockContext(), dir=str(tmp_path / "x"), hosts=["no_underscores_"])
    assert exc.value.code == 2
