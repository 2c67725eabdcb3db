"""Semantic checks of the ``frontend`` section: ports, TLS files and the API keys file.

Run by :class:`tfstack.spec.rules.Checker` once the schema is valid. Problems in a secret file name
that file and line, beside the spec's YAML path; no message ever quotes a key or key material.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tfstack.spec.frontend import (
    CONTAINER_GRPC_PORT,
    CONTAINER_REST_PORT,
    HASHED_KEY_PREFIX,
    FrontendSpec,
    frontend_enabled,
    frontend_file,
)
from tfstack.spec.model import StackSpecFields
from tfstack.spec.yamlread import Loc

MIN_API_KEY_LENGTH = 16
"""Shorter plain keys are refused: a door guarded by a guessable key is no door."""
MAX_SECRET_FILE_BYTES = 1024 * 1024
_HASHED_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")
_KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~+/=:")

AddProblem = Callable[..., None]
"""``add(loc, message, hint=None, *, file=None, line=None)``: the Checker's way to report."""


@dataclass(frozen=True)
class ApiKeyLine:
    """One meaningful line of an API keys file (never printed: it may be a key)."""

    line: int
    value: str

    @property
    def hashed(self) -> bool:
        return self.value.startswith(HASHED_KEY_PREFIX)


def api_key_lines(text: str) -> list[ApiKeyLine]:
    """Keys and hashes of a keys file: blank lines and ``#`` comments skipped, spaces trimmed."""
    found: list[ApiKeyLine] = []
    for number, raw in enumerate(text.splitlines(), 1):
        value = raw.strip()
        if value and not value.startswith("#"):
            found.append(ApiKeyLine(number, value))
    return found


def api_key_problem(entry: ApiKeyLine) -> tuple[str, str] | None:
    """What is wrong with one line (message, hint), or None."""
    if entry.hashed:
        if not _HASHED_KEY.match(entry.value):
            return (
                "a hashed key must be 'sha256:' followed by 64 lower-case hex digits",
                "write it as `sha256:$(printf %s KEY | sha256sum | cut -c1-64)`",
            )
        return None
    if not set(entry.value) <= _KEY_CHARACTERS:
        return (
            "a key may hold only letters, digits and - . _ ~ + / = : (no spaces or quotes)",
            "generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    if len(entry.value) < MIN_API_KEY_LENGTH:
        return (
            f"a key must be at least {MIN_API_KEY_LENGTH} characters long",
            "generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return None


class FrontendChecker:
    """The frontend rules over one spec; problems go to ``add`` (the Checker's reporter)."""

    def __init__(
        self, spec: StackSpecFields, spec_path: Path, add: AddProblem, *, check_disk: bool
    ) -> None:
        self.spec = spec
        self.frontend: FrontendSpec = spec.frontend
        self.spec_path = spec_path
        self.add = add
        self.check_disk = check_disk

    def run(self) -> None:
        enabled = frontend_enabled(self.frontend, self.spec.serving.replicas)
        if not enabled:
            for part in ("tls", "auth"):
                if getattr(self.frontend, part) is not None:
                    self.add(
                        ("frontend", part),
                        f"frontend.{part} is set but the front door is off "
                        f"(frontend.enabled: {self._enabled_text()}, serving.replicas: "
                        f"{self.spec.serving.replicas})",
                        "set frontend.enabled: true to serve through the door with one replica",
                    )
            return
        self.check_ports()
        if self.frontend.tls is not None and self.check_disk:
            self.check_tls(self.frontend.tls.cert_file, self.frontend.tls.key_file)
        if self.frontend.auth is not None and self.check_disk:
            self.check_api_keys(self.frontend.auth.api_keys_file)

    def _enabled_text(self) -> str:
        enabled = self.frontend.enabled
        return enabled if isinstance(enabled, str) else str(enabled).lower()

    def check_ports(self) -> None:
        # Inside the door's container REST and gRPC listen on fixed ports; stats must differ.
        taken = {CONTAINER_REST_PORT: "REST", CONTAINER_GRPC_PORT: "gRPC"}
        if self.frontend.stats_port in taken:
            self.add(
                ("frontend", "stats_port"),
                f"the door's stats port {self.frontend.stats_port} is the port its "
                f"{taken[self.frontend.stats_port]} listener uses inside the frontend container",
                "choose another stats_port, e.g. 8404",
            )

    # -- files ----------------------------------------------------------------------------

    def _read(self, loc: Loc, name: str, what: str) -> tuple[Path, bytes] | None:
        path = frontend_file(self.spec_path, name)
        if not name.strip() or "\0" in name:
            self.add(loc, f"'{name}' is not a file name", f"name the {what} file")
            return None
        try:
            if not path.is_file():
                state = "is not a file" if path.exists() else "does not exist"
                self.add(
                    loc,
                    f"{what} file {path} {state}",
                    "paths are relative to the spec's directory"
                    + ("; `invoke certs` makes a development certificate" if "TLS" in what else ""),
                )
                return None
            if path.stat().st_size > MAX_SECRET_FILE_BYTES:
                self.add(loc, f"{what} file {path} is larger than 1 MiB")
                return None
            return path, path.read_bytes()
        except OSError as exc:
            self.add(
                loc,
                f"cannot read {what} file {path}: {exc.strerror or exc}",
                "the file must be readable by the user running tfstack (and the door)",
            )
            return None

    def check_tls(self, cert_name: str, key_name: str) -> None:
        cert_loc: Loc = ("frontend", "tls", "cert_file")
        key_loc: Loc = ("frontend", "tls", "key_file")
        cert_read = self._read(cert_loc, cert_name, "TLS certificate")
        key_read = self._read(key_loc, key_name, "TLS key")
        certificate: x509.Certificate | None = None
        if cert_read is not None:
            path, data = cert_read
            try:
                certificates = x509.load_pem_x509_certificates(data)
                certificate = certificates[0]
            except ValueError:
                self.add(
                    cert_loc,
                    f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    "give the server certificate in PEM form, leaf first",
                )
        public_key = None
        if key_read is not None:
            path, data = key_read
            try:
                private = serialization.load_pem_private_key(data, password=None)
                public_key = private.public_key()
            except TypeError:
                self.add(
                    key_loc,
                    f"{path} holds an encrypted private key; the door cannot ask for a password",
                    "decrypt it (`openssl pkey -in KEY -out KEY.plain`) and keep it readable "
                    "only by you",
                )
            except ValueError:
                self.add(
                    key_loc,
                    f"{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
                    "give the certificate's private key in PEM form",
                )
            else:
                if not isinstance(
                    private,
                    rsa.RSAPrivateKey
                    | ec.EllipticCurvePrivateKey
                    | ed25519.Ed25519PrivateKey
                    | ed448.Ed448PrivateKey,
                ):
                    self.add(key_loc, f"{path} holds a key type TLS servers do not use")
                    public_key = None
        if (
            certificate is not None
            and public_key is not None
            and certificate.public_key() != public_key
        ):
            self.add(
                key_loc,
                f"the key in {frontend_file(self.spec_path, key_name)} does not match the "
                f"certificate in {frontend_file(self.spec_path, cert_name)}",
                "give the private key the certificate was issued for",
            )

    def check_api_keys(self, name: str) -> None:
        loc: Loc = ("frontend", "auth", "api_keys_file")
        read = self._read(loc, name, "API keys")
        if read is None:
            return
        path, data = read
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.add(loc, f"{path} is not UTF-8 text", "one key per line")
            return
        entries = api_key_lines(text)
        if not entries:
            self.add(
                loc,
                f"API keys file {path} holds no key (only blank lines or comments)",
                "add one key per line; `invoke certs` does not make keys: use "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
            )
            return
        seen: dict[str, int] = {}
        for entry in entries:
            problem = api_key_problem(entry)
            if problem is not None:
                self.add(
                    loc,
                    f"line {entry.line}: {problem[0]}",
                    problem[1],
                    file=str(path),
                    line=entry.line,
                )
            elif entry.value in seen:
                self.add(
                    loc,
                    f"line {entry.line} repeats the key of line {seen[entry.value]}",
                    "list each key once",
                    file=str(path),
                    line=entry.line,
                )
            seen.setdefault(entry.value, entry.line)
