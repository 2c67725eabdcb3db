"""The front door seen from the host: replicas reached directly, the door's own view of them, and
how a client reaches the stack through it.

Behind the door the serving replicas publish no ports, yet ``up``, hot reloads and a rollout's
label moves must reach every replica (a reload through a balancer reaches one replica only). The
engine runs on this host, so each replica is reached at its address on the project's network
(:func:`direct_replicas`). The door's view (which replicas are in rotation, their health, requests
and errors) comes from HAProxy's stats CSV on its internal stats port (:func:`read_door_stats`),
reached the same way; nothing of it is published. :func:`door_access` is how ``predict``, the
smoke requests of ``up`` and a rollout's check reach the stack: through the door, over TLS and
with an API key when the spec asks for them.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import requests

from tfstack.docker.compose import ContainerInfo, Replica
from tfstack.errors import StackError, UsageError
from tfstack.render.frontdoor import FRONTEND_SERVICE, SERVING_SERVICE
from tfstack.serving.client import Endpoints, GrpcClient, RestClient
from tfstack.serving.endpoints import endpoints_for
from tfstack.spec import StackSpec
from tfstack.spec.frontend import frontend_enabled, frontend_file
from tfstack.spec.frontend_rules import api_key_lines

DOOR_BACKENDS = {
    "rest_replicas": "rest",
    "grpc_replicas": "grpc",
    # A weighted canary's replica (tfstack.rollout.canary), while a rollout --traffic runs.
    "rest_canary": "rest_canary",
    "grpc_canary": "grpc_canary",
}
REPLICA_BACKENDS = ("rest", "grpc")
CANARY_BACKENDS = ("rest_canary", "grpc_canary")
STATS_PATH = "/stats;csv;norefresh"


def container_addresses(client: Any, container_id: str) -> list[str]:
    """The container's IPv4 addresses on its networks ([] when it has none or is gone)."""
    try:
        attrs = client.containers.get(container_id).attrs
    except docker.errors.APIError:  # NotFound or a refusal: the container just went away
        return []
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return [str(n["IPAddress"]) for n in networks.values() if n.get("IPAddress")]


def direct_replicas(
    client: Any, containers: Iterable[ContainerInfo], *, rest_port: int, grpc_port: int
) -> list[Replica]:
    """Every running serving container at its own network address (the door publishes nothing
    of theirs); containers without an address yet are left out."""
    found: list[Replica] = []
    for container in containers:
        if container.state != "running":
            continue
        addresses = container_addresses(client, container.id)
        if addresses:
            address = addresses[0]
            found.append(
                Replica(container.name, f"http://{address}:{rest_port}", f"{address}:{grpc_port}")
            )
    return found


@dataclass(frozen=True)
class DoorServer:
    """One replica slot of one of the door's backends, as HAProxy's stats report it."""

    backend: str  # "rest" | "grpc"
    slot: str  # HAProxy's server name (replica1, replica2, ...)
    address: str  # ip:port, "" while the slot has no address
    status: str  # UP, DOWN, MAINT (resolution), "UP 1/2", ...
    check: str  # last health check: L7OK, L4CON, L7STS, ...
    requests: int  # requests sent to it (stot: total sessions)
    errors: int  # connection + response errors (econ + eresp)
    retries: int  # requests retried away from it (wretr) or redispatched (wredis)
    active: int  # requests in flight now (scur)
    container: str = ""

    @property
    def in_rotation(self) -> bool:
        return self.status.startswith("UP")

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "slot": self.slot,
            "container": self.container or None,
            "address": self.address or None,
            "status": self.status,
            "in_rotation": self.in_rotation,
            "check": self.check or None,
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "active": self.active,
        }


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def parse_stats_csv(text: str, names_by_ip: Mapping[str, str] | None = None) -> list[DoorServer]:
    """Server rows of the door's backends from HAProxy's stats CSV (``# pxname,svname,...``)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
    servers: list[DoorServer] = []
    for row in reader:
        backend = DOOR_BACKENDS.get(row.get("pxname", ""))
        name = row.get("svname", "")
        if backend is None or name in ("FRONTEND", "BACKEND"):
            continue
        address = row.get("addr", "") or ""
        status = row.get("status", "") or ""
        if not address and status.startswith("MAINT"):
            continue  # a spare slot: no replica has it (render.frontdoor.door_slots)
        ip = address.rsplit(":", 1)[0] if address else ""
        servers.append(
            DoorServer(
                backend=backend,
                slot=name,
                address=address,
                status=status,
                check=row.get("check_status", "") or "",
                requests=_int(row.get("stot")),
                errors=_int(row.get("econ")) + _int(row.get("eresp")),
                retries=_int(row.get("wretr")) + _int(row.get("wredis")),
                active=_int(row.get("scur")),
                container=(names_by_ip or {}).get(ip, ""),
            )
        )
    return servers


@dataclass(frozen=True)
class DoorStatus:
    """The door as ``status`` shows it: its container, endpoints and every replica slot."""

    container: str
    state: str
    servers: tuple[DoorServer, ...] = ()
    error: str | None = None  # why the stats could not be read

    def in_rotation(self, backend: str) -> list[str]:
        return [
            s.container or s.address for s in self.servers if s.backend == backend and s.in_rotation
        ]

    @property
    def ok(self) -> bool:
        """Running, stats read, REST and gRPC each with a replica in rotation, and every replica
        slot that has an address in rotation (one out of rotation is a replica the door skips)."""
        return (
            self.state == "running"
            and self.error is None
            and all(self.in_rotation(b) for b in ("rest", "grpc"))
            and all(s.in_rotation for s in self.servers if s.address)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "state": self.state,
            "ok": self.ok,
            "in_rotation": {b: self.in_rotation(b) for b in ("rest", "grpc")},
            "servers": [s.to_json() for s in self.servers],
            "error": self.error,
        }


def read_door_stats(
    client: Any,
    frontend: ContainerInfo,
    replicas: Sequence[ContainerInfo],
    *,
    stats_port: int,
    get: Callable[..., Any] = requests.get,
) -> DoorStatus:
    """The door's view of the replicas (HAProxy's stats CSV from the frontend's address)."""
    addresses = container_addresses(client, frontend.id) if frontend.state == "running" else []
    if not addresses:
        return DoorStatus(frontend.name, frontend.state, error="the door is not running")
    names: dict[str, str] = {}
    for replica in replicas:
        for ip in container_addresses(client, replica.id):
            names[ip] = replica.name
    url = f"http://{addresses[0]}:{stats_port}{STATS_PATH}"
    try:
        response = get(url, timeout=3)
        response.raise_for_status()
    except requests.RequestException as exc:
        return DoorStatus(frontend.name, frontend.state, error=f"stats unreadable at {url}: {exc}")
    return DoorStatus(frontend.name, frontend.state, tuple(parse_stats_csv(response.text, names)))


def frontend_container(containers: Iterable[ContainerInfo]) -> ContainerInfo | None:
    for container in containers:
        if container.service == FRONTEND_SERVICE:
            return container
    return None


def wait_in_rotation(
    read: Callable[[], DoorStatus], wanted: int, *, timeout: float, interval: float = 0.25
) -> DoorStatus:
    """Until ``wanted`` replicas are in rotation for REST and for gRPC; StackError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        status = read()
        counts = {b: len(status.in_rotation(b)) for b in ("rest", "grpc")}
        if all(count >= wanted for count in counts.values()):
            return status
        if time.monotonic() >= deadline:
            seen = "; ".join(
                f"{s.backend} {s.slot} {s.address or 'no address'} {s.status} ({s.check})"
                for s in status.servers
            )
            raise StackError(
                f"the front door has {counts['rest']} REST and {counts['grpc']} gRPC replicas in "
                f"rotation after {timeout:.0f} s, {wanted} wanted"
                + (f" ({status.error})" if status.error else "")
                + (f": {seen}" if seen else ""),
                service=FRONTEND_SERVICE,
                hint="`invoke logs` shows the door's log; a replica enters rotation once its "
                "/readyz answers 200 (every declared version and label AVAILABLE)",
            )
        time.sleep(interval)


def door_view(
    client: Any, containers: Sequence[ContainerInfo], *, stats_port: int
) -> DoorStatus | None:
    """The door's view of the project's replicas (None when the project has no door container)."""
    door = frontend_container(containers)
    if door is None:
        return None
    serving = [c for c in containers if c.service == SERVING_SERVICE]
    return read_door_stats(client, door, serving, stats_port=stats_port)


def wait_replica_in_rotation(
    read: Callable[[], DoorStatus | None],
    replica: str,
    *,
    timeout: float,
    interval: float = 0.1,
    backends: Sequence[str] = REPLICA_BACKENDS,
) -> DoorStatus | None:
    """Until the door has the container ``replica`` in rotation for REST and for gRPC.

    A hot reload or a rollout step that reloads one replica after another waits for this before
    it touches the next one: a replica that left the rotation while it loaded a version must be
    back before another may leave, or for a moment no replica would take requests. Without a
    running door (``read`` gives None, or a door container that is not running) nothing routes
    requests, so there is nothing to wait for.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = read()
        if status is None or status.state != "running":
            return status
        if all(replica in status.in_rotation(backend) for backend in backends):
            return status
        if time.monotonic() >= deadline:
            seen = "; ".join(
                f"{s.backend} {s.slot} {s.container or s.address or 'no address'} "
                f"{s.status} ({s.check})"
                for s in status.servers
            ) or (status.error or "no replica slot")
            raise StackError(
                f"the front door has not put {replica} back in rotation {timeout:.0f} s after "
                f"its reload: {seen}",
                service=FRONTEND_SERVICE,
                hint="`invoke status` shows the door's health checks; a replica enters rotation "
                "once its /readyz answers 200 (every declared version and label AVAILABLE)",
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class DoorAccess:
    """How to reach the stack: its endpoints, the CA file for TLS, the API key (not in repr)."""

    endpoints: Endpoints
    ca_file: Path | None = None  # TLS on: the certificates the door's is checked against
    api_key: str | None = field(default=None, repr=False)

    @property
    def rest_url(self) -> str:
        if self.ca_file is None:
            return self.endpoints.rest_url
        return f"https://{self.endpoints.host}:{self.endpoints.rest_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def rest(self, timeout: float = 30.0) -> RestClient:
        verify: str | bool = str(self.ca_file) if self.ca_file is not None else True
        return RestClient(self.rest_url, timeout=timeout, headers=self.headers(), verify=verify)

    def grpc(self) -> GrpcClient:
        root = _read_file(self.ca_file, "--ca-file") if self.ca_file is not None else None
        metadata = [("authorization", f"Bearer {self.api_key}")] if self.api_key else []
        return GrpcClient(self.endpoints.grpc_target, root_certificates=root, metadata=metadata)


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"{what} {path}: cannot read it: {exc.strerror or exc}",
            hint="name a readable PEM file",
        ) from exc


def first_plain_key(keys_file: Path) -> str:
    """The first plain key of an API keys file; UsageError when it holds only hashes."""
    try:
        text = keys_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"frontend.auth.api_keys_file {keys_file}: cannot read it ({type(exc).__name__})",
            hint="pass the key with --api-key, or fix the file's path or permissions",
        ) from exc
    for entry in api_key_lines(text):
        if not entry.hashed:
            return entry.value
    raise UsageError(
        f"frontend.auth.api_keys_file {keys_file} holds only hashed keys (sha256:...): "
        "a key cannot be recovered from its hash",
        hint="pass the key with --api-key KEY",
    )


def door_access(
    spec: StackSpec,
    spec_path: Path,
    *,
    api_key: str | None = None,
    ca_file: Path | None = None,
) -> DoorAccess:
    """Endpoints, TLS trust and API key for one request to the stack the spec describes."""
    endpoints = endpoints_for(spec)
    frontend = spec.frontend
    if not frontend_enabled(frontend, spec.serving.replicas):
        if ca_file is not None:
            raise UsageError(
                f"--ca-file: the stack of {spec_path} has no front door, so no TLS",
                hint="drop --ca-file, or turn the door on (frontend.enabled: true) with "
                "frontend.tls",
            )
        return DoorAccess(endpoints, api_key=api_key)
    if ca_file is None and frontend.tls is not None:
        ca_file = frontend_file(spec_path, frontend.tls.cert_file)
    elif ca_file is not None and frontend.tls is None:
        raise UsageError(
            f"--ca-file: the front door of {spec_path} has no TLS (frontend.tls is not set)",
            hint="drop --ca-file",
        )
    if api_key is None and frontend.auth is not None:
        api_key = first_plain_key(frontend_file(spec_path, frontend.auth.api_keys_file))
    return DoorAccess(endpoints, ca_file=ca_file, api_key=api_key)
