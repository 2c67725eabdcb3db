"""The front door's rendered pieces: HAProxy's configuration and the ``frontend`` compose service.

Pure like the rest of the renderer: :func:`frontdoor_values` works out every number and path the
template lays out, :func:`render_haproxy_config` fills ``frontend/haproxy.cfg.j2`` and
:func:`frontend_block` describes the compose service. :func:`check_haproxy_config` proves the
rendered file with ``haproxy -c`` inside the frontend image (no network, secrets mounted read-only
exactly as the real container sees them) before anything is written.

Secrets never enter a rendered file: the TLS key and the API keys stay in the operator's files and
are bind-mounted read-only; the configuration only names the mount points.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.core.labels import LABEL_FRONTEND_DIGEST
from tfstack.render.imagecheck import ConfigCheck, check_config_in_image, check_run_command
from tfstack.spec import StackSpec, frontend_enabled, frontend_file
from tfstack.spec.frontend import CONTAINER_GRPC_PORT, CONTAINER_REST_PORT, HASHED_KEY_PREFIX

FRONTEND_SERVICE = "frontend"
SERVING_SERVICE = "serving"
HAPROXY_CONFIG = "config/frontend/haproxy.cfg"
CANARY_MAP = "config/frontend/canary.map"
CONTAINER_HAPROXY_DIR = "/usr/local/etc/haproxy"
CONTAINER_CANARY_MAP = f"{CONTAINER_HAPROXY_DIR}/canary.map"
DOOR_ADMIN_PORT = 9999
"""The door's runtime API port, bound to 127.0.0.1 inside its container (reached by docker exec)."""
CANARY_MAP_TEXT = (
    "# The canary traffic shares (model -> percent) live in the door's\n"
    "# memory, set by `rollout --traffic` through HAProxy's runtime API; this file stays empty.\n"
)
CONTAINER_SECRETS_DIR = "/run/secrets/tfstack"
CONTAINER_TLS_CERT = f"{CONTAINER_SECRETS_DIR}/tls/server.pem"
# HAProxy finds the key beside the certificate as <crt>.key (ssl-load-extra-files key).
CONTAINER_TLS_KEY = f"{CONTAINER_TLS_CERT}.key"
CONTAINER_API_KEYS = f"{CONTAINER_SECRETS_DIR}/api_keys"
READY_PATH = "/readyz"
"""The runtime's readiness endpoint: 200 only while every declared version/label is AVAILABLE."""
RUN_TMPFS = "/run/haproxy:size=1m,mode=1777"
BUFSIZE = 65536
CONNECT_TIMEOUT_MS = 2000
HTTP_REQUEST_TIMEOUT_MS = 10_000
KEEP_ALIVE_TIMEOUT_MS = 60_000
CHECK_TIMEOUT_MS = 2000
STOP_GRACE_S = 10
HAPROXY_CHECK_TIMEOUT_S = 60


DOOR_SLOTS = 4
"""Server slots per door backend, at least: replicas take and leave them by Docker's DNS."""


def door_slots(replicas: int) -> int:
    """The door's server slots per backend for ``replicas`` serving replicas.

    At least :data:`DOOR_SLOTS`, so scaling ``serving.replicas`` within them leaves the door's
    config as it is: the door keeps running (a config change recreates it, cutting open
    connections) and a leaving replica's slot empties when its address leaves the DNS answer.
    Slots without a replica have no address and no health check; status does not list them.
    """
    return max(replicas, DOOR_SLOTS)


def door_is_on(spec: StackSpec) -> bool:
    """Whether this spec renders a front door."""
    return frontend_enabled(spec.frontend, spec.serving.replicas)


@dataclass(frozen=True)
class SecretMount:
    """A secret file bind-mounted read-only into the frontend (its content is never read here)."""

    source: Path
    target: str


def secret_mounts(spec: StackSpec, spec_path: Path) -> list[SecretMount]:
    """The TLS certificate and key and the API keys file, where the door finds them."""
    frontend = spec.frontend
    mounts: list[SecretMount] = []
    if frontend.tls is not None:
        mounts.append(
            SecretMount(frontend_file(spec_path, frontend.tls.cert_file), CONTAINER_TLS_CERT)
        )
        mounts.append(
            SecretMount(frontend_file(spec_path, frontend.tls.key_file), CONTAINER_TLS_KEY)
        )
    if frontend.auth is not None:
        mounts.append(
            SecretMount(frontend_file(spec_path, frontend.auth.api_keys_file), CONTAINER_API_KEYS)
        )
    return mounts


def _ms(value: int) -> str:
    return f"{value}ms"


def canary_host(project: str) -> str:
    """The canary replica's container name: the door finds it by Docker's DNS."""
    return f"{project}-canary"


def frontdoor_values(spec: StackSpec, *, canary: bool = True) -> dict[str, Any]:
    """Everything the HAProxy template needs, as plain data (``canary``: the weighted-canary
    backends and runtime API, on the compose target only)."""
    frontend = spec.frontend
    serving = spec.serving
    request_ms = serving.rest_api_timeout_ms
    health_ms = frontend.health_interval_ms
    return {
        # Server slots per backend, not the replica count: see door_slots.
        "replicas": door_slots(serving.replicas),
        "max_connections": frontend.max_connections,
        "max_connections_per_replica": frontend.max_connections_per_replica,
        "threads": frontend.threads,
        "bufsize": BUFSIZE,
        "retries": frontend.retries,
        "hard_stop_after": f"{STOP_GRACE_S}s",
        "hashed_prefix": HASHED_KEY_PREFIX,
        "timeouts": {
            "connect": _ms(CONNECT_TIMEOUT_MS),
            # The server answers a slow request itself after rest_api_timeout_ms; the door waits
            # a little longer so the server's own error reaches the client.
            "server": _ms(request_ms + 1000),
            "client": _ms(max(request_ms + 2000, KEEP_ALIVE_TIMEOUT_MS)),
            "queue": _ms(request_ms),
            "http_request": _ms(HTTP_REQUEST_TIMEOUT_MS),
            "keep_alive": _ms(KEEP_ALIVE_TIMEOUT_MS),
            "check": _ms(CHECK_TIMEOUT_MS),
        },
        # How the door holds server connections: the compose door keeps them alive (a stopped
        # container resets them); the Swarm door overrides this (render/swarm.py swarm_door_values).
        "connections": {"server_close": False, "observe_errors": 0},
        "health": {
            # Official TF Serving images have no readiness endpoint: a TCP check then.
            "http": serving.healthcheck,
            "path": READY_PATH,
            "inter": _ms(health_ms),
            "fastinter": _ms(max(100, health_ms // 2)),
            "rise": 1,
            "fall": 2,
        },
        "ports": {
            "rest": CONTAINER_REST_PORT,
            "grpc": CONTAINER_GRPC_PORT,
            "stats": frontend.stats_port,
        },
        "replica": {
            "host": SERVING_SERVICE,
            "rest_port": serving.rest_port,
            "grpc_port": serving.grpc_port,
        },
        "tls": {"cert": CONTAINER_TLS_CERT} if frontend.tls is not None else None,
        "auth": {"keys_file": CONTAINER_API_KEYS} if frontend.auth is not None else None,
        "canary": {
            "host": canary_host(spec.project),
            "map": CONTAINER_CANARY_MAP,
            "admin_port": DOOR_ADMIN_PORT,
        }
        if canary
        else None,
    }


def frontend_digest(config_text: str) -> str:
    """sha256 of the rendered HAProxy config: a label, so a changed config recreates the door."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DoorPort:
    name: str
    target: int
    host_ip: str
    published: str


def door_ports(spec: StackSpec) -> list[DoorPort]:
    """The door publishes the spec's gRPC and REST ports on the bind address (one each)."""
    serving = spec.serving
    return [
        DoorPort("grpc", CONTAINER_GRPC_PORT, serving.bind_address, str(serving.grpc_port)),
        DoorPort("rest", CONTAINER_REST_PORT, serving.bind_address, str(serving.rest_port)),
    ]


def _compose_relative(host: Path, root: Path) -> str:
    return Path(os.path.relpath(host, root.resolve() / "compose")).as_posix()


def frontend_service_values(
    spec: StackSpec, spec_path: Path, root: Path, config_text: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The values of the compose ``frontend`` service (template ``service-frontend.yml.j2``)."""
    mounts = [
        {
            "source": _compose_relative(root.resolve() / Path(HAPROXY_CONFIG).parent, root),
            "target": CONTAINER_HAPROXY_DIR,
        }
    ]
    for secret in secret_mounts(spec, spec_path):
        source = secret.source.resolve()
        # Inside the project: relative like the model repository; elsewhere: absolute.
        inside = source.is_relative_to(root.resolve())
        mounts.append(
            {
                "source": _compose_relative(source, root) if inside else source.as_posix(),
                "target": secret.target,
            }
        )
    return {
        "image": spec.frontend.image,
        # The operator's uid reads the operator's secret files (often mode 600).
        "user": spec.serving.user,
        "tmpfs": [RUN_TMPFS],
        "ports": door_ports(spec),
        "mounts": mounts,
        "depends_on": [SERVING_SERVICE],
        "labels": {**labels, LABEL_FRONTEND_DIGEST: frontend_digest(config_text)},
        "stop_grace_period": f"{STOP_GRACE_S + 2}s",
        "restart": "unless-stopped",
    }


# --------------------------------------------------------------------------- haproxy -c


def haproxy_check_command(
    docker: str, image: str, config_dir: Path, secrets: Sequence[SecretMount], *, user: str
) -> list[str]:
    """``docker run`` of ``haproxy -c`` on a rendered config, secrets mounted as in the stack and
    read as the door's user (``user``: uid:gid, the door's ``user:``), without capabilities."""
    command = check_run_command(
        docker, config_dir, CONTAINER_HAPROXY_DIR, tmpfs=RUN_TMPFS, user=user
    )
    for secret in secrets:
        command += ["-v", f"{secret.source.resolve()}:{secret.target}:ro"]
    # The image's entrypoint already names the config file.
    command += [image, "-c"]
    return command


HAPROXY_CHECK = ConfigCheck(
    config=HAPROXY_CONFIG,
    filename="haproxy.cfg",
    companions=((CANARY_MAP, "canary.map"),),
    tool="haproxy -c",
    what="the door's HAProxy config",
    missing_hint="run `invoke images` (it builds the frontend image offline)",
    refusal="HAProxy refuses the rendered door config",
    refusal_hint="check the frontend section of the spec (TLS files, API keys file); if the "
    "spec is right this is a bug in tfstack's template",
    tmp_prefix="tfstack-haproxy-check-",
    timeout_s=HAPROXY_CHECK_TIMEOUT_S,
)


def check_haproxy_config(
    files: Mapping[str, str],
    spec: StackSpec,
    spec_path: Path,
    *,
    required: bool | None = None,
    check: ConfigCheck = HAPROXY_CHECK,
) -> bool:
    """``haproxy -c`` on the rendered door config; False when it could not run (no image/CLI).

    ``required``: True raises when the check cannot run; None runs it when the image is present.
    ``check``: where the config is among ``files`` (the Swarm door's lives elsewhere).
    Raises RenderError with HAProxy's own message when the config is refused.
    """
    image = spec.frontend.image

    def command(docker: str, config_dir: Path) -> list[str]:
        return haproxy_check_command(
            docker, image, config_dir, secret_mounts(spec, spec_path), user=spec.serving.user
        )

    return check_config_in_image(check, files, image, command, required=required)
