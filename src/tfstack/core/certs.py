"""Development certificates for the front door: a local CA and a server certificate it signs.

``invoke certs`` plans (pure: which files, which names, whether an existing CA is reused) and then
applies: keys are EC P-256, written atomically with mode 0600 and never printed; certificates are
PEM, mode 0644, ``server.pem`` holding the leaf then the CA. An existing CA in the directory is
reused so clients that trust it keep working; the server certificate is issued anew on every run.
For development only: the CA key sits next to the certificates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tfstack.errors import TfstackError, UsageError, WriteError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
KEY_MODE = 0o600
CERT_MODE = 0o644
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a leaf
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class CertPlan:
    """What ``invoke certs`` will write (pure)."""

    directory: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    reuse_ca: bool  # ca.pem and ca-key.pem exist: sign with them

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def describe(self) -> list[str]:
        names = ", ".join([*self.dns_names, *self.ip_addresses])
        ca = f"reuse the CA {self.ca_cert}" if self.reuse_ca else f"new CA {self.ca_cert}"
        return [ca, f"server certificate {self.server_cert} for {names}"]


def _host_kind(host: str) -> str:
    """'ip' or 'dns'; UsageError naming the host when it is neither."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "ip"
    labels = host.removeprefix("*.").rstrip(".").split(".")
    if len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels):
        return "dns"
    raise UsageError(
        f"--hosts: {host!r} is neither an IP address nor a DNS name",
        hint="give host names (letters, digits, '-', dots) or IP addresses, comma separated",
    )


def plan_certs(directory: Path, hosts: Sequence[str] = ()) -> CertPlan:
    """The files and names of ``invoke certs`` (``hosts`` may hold comma-separated lists)."""
    names: list[str] = []
    for entry in hosts or DEFAULT_HOSTS:
        for raw in entry.split(","):
            host = raw.strip()
            if host and host not in names:
                names.append(host)
    if not names:
        raise UsageError("--hosts names no host", hint="e.g. --hosts localhost,127.0.0.1")
    kinds = {host: _host_kind(host) for host in names}
    ca_files = [directory / CA_CERT, directory / CA_KEY]
    present = [path.exists() for path in ca_files]
    if any(present) and not all(present):
        have, missing = (ca_files[0], ca_files[1]) if present[0] else (ca_files[1], ca_files[0])
        raise TfstackError(
            f"{have} exists without {missing}: the CA is incomplete",
            hint=f"remove {have} to make a new CA (clients trusting the old one must be updated)",
        )
    return CertPlan(
        directory=directory,
        dns_names=tuple(h for h in names if kinds[h] == "dns"),
        ip_addresses=tuple(h for h in names if kinds[h] == "ip"),
        reuse_ca=all(present),
    )


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename) with ``mode``;
    the temporary file is created with that mode, so a key is never readable by others."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise WriteError(
            f"cannot write: {exc.strerror}", path=str(path), hint="check the directory's owner"
        ) from exc


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tfstack development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("tfstack development CA")
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(plan: CertPlan) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(plan.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(plan.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TfstackError(
            f"{plan.ca_cert} / {plan.ca_key}: not a usable CA ({type(exc).__name__})",
            hint="remove both files to make a new CA",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise TfstackError(
            f"{plan.ca_key} does not match {plan.ca_cert}",
            hint="remove both files to make a new CA",
        )
    return cert, key


def _server(
    plan: CertPlan, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in plan.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in plan.ip_addresses]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name([*plan.dns_names, *plan.ip_addresses][0]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def apply_certs(plan: CertPlan, *, now: dt.datetime | None = None) -> list[Path]:
    """Write the CA (unless reused) and the server certificate and key; the paths written."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        plan.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(
            f"cannot create the directory: {exc.strerror}", path=str(plan.directory)
        ) from exc
    written: list[Path] = []
    if plan.reuse_ca:
        ca, ca_key = _load_ca(plan)
    else:
        ca, ca_key = _new_ca(now)
        write_private(plan.ca_key, _key_pem(ca_key), KEY_MODE)
        write_private(plan.ca_cert, ca.public_bytes(serialization.Encoding.PEM), CERT_MODE)
        written += [plan.ca_cert, plan.ca_key]
    cert, key = _server(plan, ca, ca_key, now)
    write_private(plan.server_key, _key_pem(key), KEY_MODE)
    # Leaf then CA: clients that trust the spec's cert_file (predict's default) find the CA there.
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM
    )
    write_private(plan.server_cert, chain, CERT_MODE)
    return [*written, plan.server_cert, plan.server_key]


def spec_lines(plan: CertPlan, spec_dir: Path) -> list[str]:
    """The ``frontend.tls`` lines to add to the spec: paths relative to the spec's directory
    when the files are inside the project (the spec's parent), else absolute."""
    project = spec_dir.resolve().parent

    def where(path: Path) -> str:
        path = path.resolve()
        if path.is_relative_to(project):
            return os.path.relpath(path, spec_dir.resolve())
        return str(path)

    return [
        "frontend:",
        "  tls:",
        f"    cert_file: {where(plan.server_cert)}",
        f"    key_file: {where(plan.server_key)}",
    ]
