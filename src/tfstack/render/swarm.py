"""The Swarm target's files: ``compose/stack.yml`` for ``docker stack deploy`` and its configs.

Pure: spec, the image references the nodes pull and the model image's digest in; text keyed by
path (relative to the project root) out. ``docker stack deploy`` ignores ``build:`` and rejects the
long-form ``depends_on`` Compose emits, so this is a stack file of its own (docs/swarm.md):

- ``models``: a global service running the model image; it copies the served versions and the
  rendered models.config into the node's ``models`` volume (never overwriting a file a server may
  be reading) and then idles. A new model image is a new revision of this service only.
- ``serving``: the runtime reading /models from that volume (read-only), waiting for the
  models.config of this revision before starting, re-reading it every few seconds (the hot reload
  path); replicas spread over nodes, start-first updates that roll back on failure, the probe as
  health check, batching/monitoring configs as Swarm configs with content-versioned names.
- ``frontend``: HAProxy finding tasks by DNS (``tasks.serving``), owning the published ports in
  host mode (dnsrr cannot use the ingress mesh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfstack.render.frontdoor import (
    CANARY_MAP_TEXT,
    CONTAINER_CANARY_MAP,
    FRONTEND_SERVICE,
    HAPROXY_CHECK,
    SERVING_SERVICE,
    check_haproxy_config,
    frontdoor_values,
)
from tfstack.render.renderer import (
    BATCHING_CONFIG,
    COMPOSE_DIR,
    HEALTHCHECK_RETRIES,
    HEALTHCHECK_START_PERIOD,
    HEALTHCHECK_TIMEOUT,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    PROBE_COMMAND,
    RenderedFiles,
    header,
    project_labels,
    render_stack,
    render_template,
    serving_flags,
)
from tfstack.spec import CONTAINER_CONFIG_DIR, StackSpec
from tfstack.spec.frontend import CONTAINER_GRPC_PORT, CONTAINER_REST_PORT

STACK_FILE = f"{COMPOSE_DIR}/stack.yml"
SWARM_DIR = f"{COMPOSE_DIR}/swarm"
MODELS_SERVICE = "models"
MODELS_VOLUME = "models"
NETWORK = "backend"
MODEL_ROOT = "/models"  # where serving sees the volume (models.config base paths point here)
IMAGE_MODELS_DIR = "/tfstack-models"  # the repository inside the model image
VERSIONS_FILE = "versions.txt"  # in the model image: <sha256> <version dir> per version
CONFIG_IN_VOLUME = f"{MODEL_ROOT}/.tfstack/models.config"
DEFAULT_RELOAD_POLL_S = 2
STACK_FORMAT = "3.8"
LABEL_REVISION = "org.tfstack.models-revision"
HAPROXY_FILE = "haproxy.cfg"
CANARY_MAP_FILE = "canary.map"
CANARY_SERVICE = "canary"
"""A weighted canary's service (``rollout --traffic``), created beside the stack, not in it."""
SWARM_CONNECT_TIMEOUT_MS = 1000
SWARM_OBSERVE_ERRORS = 1  # consecutive connection errors that take a task out of the door
# A Swarm task is `running` (and in `tasks.<service>`, so in the door) only after its first passing
# health check, and engine 20.10 has no `start_interval`: the interval is also the granularity of a
# replacement's start. The probe is a stdlib-only script that starts in milliseconds.
SWARM_HEALTHCHECK_INTERVAL = "1s"
# Swarm waits this long before it starts a task that replaces a failed one or one of a lost node.
SWARM_RESTART_DELAY = "1s"


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases: every service spells its labels out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True)
class SwarmImages:
    """The references every node pulls (from ``deploy.swarm.registry``)."""

    serving: str
    frontend: str
    models: str
    models_digest: str  # content digest of the model image's files (its revision)


def _seconds(text: str) -> int:
    return int(text.rstrip("s"))


def health_window_s() -> int:
    """How long a new task may take to become healthy: start period + retries x interval."""
    return _seconds(HEALTHCHECK_START_PERIOD) + HEALTHCHECK_RETRIES * _seconds(
        SWARM_HEALTHCHECK_INTERVAL
    )


def swarm_serving_flags(spec: StackSpec) -> list[str]:
    """The compose flags with models.config read from the model volume, re-read every few s."""
    poll = spec.serving.config_poll_seconds or DEFAULT_RELOAD_POLL_S
    flags: list[str] = []
    for flag in serving_flags(spec):
        if flag.startswith("--model_config_file="):
            flags.append(f"--model_config_file={CONFIG_IN_VOLUME}")
        elif flag.startswith("--model_config_file_poll_wait_seconds="):
            flags.append(f"--model_config_file_poll_wait_seconds={poll}")
        else:
            flags.append(flag)
    return flags


def install_script(
    revision: str, *, image_dir: str = IMAGE_MODELS_DIR, root: str = MODEL_ROOT
) -> str:
    """The models service's work on a node: this revision's version directories and
    models.config into the volume (``sh``; the service then idles).

    A version directory is copied when the volume lacks it or holds other bytes under that
    number (its digest in ``<image>/versions.txt`` differs from the one recorded beside it: a
    version aborted and rolled out again with a fixed model); it is copied under a hidden name
    and renamed into place, so a server never sees half a version. models.config is replaced by
    rename last, once every version it names is in place.
    """
    state = f"{root}/.tfstack/versions"
    return (
        "set -e\n"
        f"mkdir -p {state}\n"
        "while read -r digest dir; do\n"
        f'  mark="{state}/$dir.sha256"\n'
        f'  if [ -d "{root}/$dir" ] && [ "$(cat "$mark" 2>/dev/null)" = "$digest" ]; then\n'
        "    continue\n"
        "  fi\n"
        '  base="${dir%/*}"; name="${dir##*/}"\n'
        f'  incoming="{root}/$base/.incoming-$name"; replaced="{root}/$base/.replaced-$name"\n'
        f'  mkdir -p "{root}/$base" "${{mark%/*}}"\n'
        '  rm -rf "$incoming" "$replaced"\n'
        f'  cp -R "{image_dir}/repository/$dir" "$incoming"\n'
        f'  if [ -d "{root}/$dir" ]; then mv "{root}/$dir" "$replaced"; fi\n'
        f'  mv "$incoming" "{root}/$dir"\n'
        '  rm -rf "$replaced"\n'
        '  echo "$digest" > "$mark"\n'
        f"done < {image_dir}/{VERSIONS_FILE}\n"
        f"cp {image_dir}/models.config {root}/.tfstack/models.config.tmp\n"
        f"mv -f {root}/.tfstack/models.config.tmp {root}/.tfstack/models.config\n"
        f"echo {revision} > {root}/.tfstack/revision\n"
        f"echo models revision {revision} in place\n"
    )


def _stack_escaped(text: str) -> str:
    """``$`` as ``docker stack deploy`` passes it through (it interpolates ``$name``)."""
    return text.replace("$", "$$")


def _wait_then_serve() -> list[str]:
    # The image's entrypoint sets defaults; this waits for the volume then does the same.
    return [
        "sh",
        "-c",
        f'until [ -s {CONFIG_IN_VOLUME} ]; do sleep 1; done; exec tensorflow_model_server "$$@"',
        "tensorflow_model_server",
    ]


def canary_service_name(stack: str) -> str:
    """The canary's service: outside the stack file, so ``stack deploy --prune`` keeps it."""
    return f"{stack}_{CANARY_SERVICE}"


def swarm_door_values(spec: StackSpec) -> dict[str, Any]:
    """The door's template values on a Swarm: every task by DNS, no request lost to a node
    that vanished, and the weighted canary's backends (the canary service's task by DNS).

    A killed or partitioned node sends no RST: a request written on a kept-alive connection to
    one of its tasks waits for ``timeout server`` (longer than clients wait), and a new
    connection waits for ``timeout connect``. So the Swarm door opens a server connection per
    request (``http-server-close``: a dead task is then a connect failure, which is retried on
    another task), gives up connecting after :data:`SWARM_CONNECT_TIMEOUT_MS` (tasks are one
    overlay hop away) and marks a task down on its first connection error (``observe layer4``)
    instead of waiting for ``fall`` failed health checks.
    """
    door = frontdoor_values(spec)
    door["replica"] = {**door["replica"], "host": f"tasks.{SERVING_SERVICE}"}
    door["canary"] = {**door["canary"], "host": f"tasks.{canary_service_name(stack_name(spec))}"}
    door["timeouts"] = {**door["timeouts"], "connect": f"{SWARM_CONNECT_TIMEOUT_MS}ms"}
    door["connections"] = {"server_close": True, "observe_errors": SWARM_OBSERVE_ERRORS}
    return door


def _config_name(stack: str, key: str, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{stack}-{key}-{digest}"


def stack_name(spec: StackSpec) -> str:
    return spec.deploy.swarm.stack or spec.project


def _resources(spec: StackSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    resources = spec.serving.resources
    if resources.cpus is not None:
        limits["cpus"] = f"{resources.cpus:g}"
    if resources.memory is not None:
        limits["memory"] = (
            resources.memory.upper() if resources.memory[-1:].isalpha() else resources.memory
        )
    return {"limits": limits} if limits else {}


def render_swarm(
    spec: StackSpec, spec_path: Path, root: Path, images: SwarmImages
) -> RenderedFiles:
    """The stack file and the config files it names (keys relative to ``root``)."""
    swarm = spec.deploy.swarm
    stack = stack_name(spec)
    compose_files = render_stack(spec, spec_path, root)
    head = header(spec_path, root)
    files: RenderedFiles = {}
    labels = project_labels(spec)
    configs: dict[str, dict[str, str]] = {}
    serving_configs: list[dict[str, Any]] = []
    for key, source in (("batching", BATCHING_CONFIG), ("monitoring", MONITORING_CONFIG)):
        if source in compose_files:
            text = compose_files[source]
            path = f"{SWARM_DIR}/{key}.config"
            files[path] = text
            name = _config_name(stack, key, text)
            configs[name] = {"name": name, "file": f"swarm/{key}.config"}
            serving_configs.append(
                {"source": name, "target": f"{CONTAINER_CONFIG_DIR}/{key}.config", "mode": 0o444}
            )
    door = swarm_door_values(spec)
    haproxy = render_template("frontend/haproxy.cfg.j2", {"header": head, **door})
    files[f"{SWARM_DIR}/{HAPROXY_FILE}"] = haproxy
    haproxy_name = _config_name(stack, "haproxy", haproxy)
    configs[haproxy_name] = {"name": haproxy_name, "file": f"swarm/{HAPROXY_FILE}"}
    # The canary shares live in the door's memory (runtime API); the file stays empty, so a
    # restarted door sends nothing to a canary.
    files[f"{SWARM_DIR}/{CANARY_MAP_FILE}"] = CANARY_MAP_TEXT
    canary_map_name = _config_name(stack, "canary-map", CANARY_MAP_TEXT)
    configs[canary_map_name] = {"name": canary_map_name, "file": f"swarm/{CANARY_MAP_FILE}"}

    window = health_window_s()
    monitor = max(swarm.monitor_seconds or window, window)
    grace = math.ceil(spec.serving.shutdown_grace_seconds) + 5
    constraints = list(swarm.constraints)
    placement: dict[str, Any] = {"preferences": [{"spread": "node.id"}]}
    if constraints:
        placement["constraints"] = constraints
    if swarm.max_replicas_per_node:
        placement["max_replicas_per_node"] = swarm.max_replicas_per_node
    update = {
        "parallelism": swarm.update_parallelism,
        "delay": f"{swarm.update_delay_seconds}s",
        "order": "start-first",
        "failure_action": "rollback",
        "monitor": f"{monitor}s",
        "max_failure_ratio": 0,
    }
    rollback = {**update, "failure_action": "pause"}
    healthcheck: dict[str, Any] | None = None
    if spec.serving.healthcheck:
        healthcheck = {
            "test": [
                "CMD",
                PROBE_COMMAND,
                f"--rest-port={spec.serving.rest_port}",
                f"--model-config={CONFIG_IN_VOLUME}",
            ],
            "interval": SWARM_HEALTHCHECK_INTERVAL,
            "timeout": HEALTHCHECK_TIMEOUT,
            "retries": HEALTHCHECK_RETRIES,
            "start_period": HEALTHCHECK_START_PERIOD,
        }
    serving: dict[str, Any] = {
        "image": images.serving,
        "entrypoint": _wait_then_serve(),
        "command": swarm_serving_flags(spec),
        "user": spec.serving.user,
        "volumes": [
            {"type": "volume", "source": MODELS_VOLUME, "target": MODEL_ROOT, "read_only": True},
            {"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 64 * 1024 * 1024}},
        ],
        "configs": serving_configs,
        "networks": [NETWORK],
        "stop_grace_period": f"{grace}s",
        "labels": labels,
        "deploy": {
            "mode": "replicated",
            "replicas": spec.serving.replicas,
            "endpoint_mode": swarm.endpoint_mode,
            "update_config": update,
            "rollback_config": rollback,
            "restart_policy": {
                "condition": "any",
                "delay": SWARM_RESTART_DELAY,
                "window": "30s",
            },
            "placement": placement,
            "labels": labels,
            **({"resources": _resources(spec)} if _resources(spec) else {}),
        },
    }
    if healthcheck is not None:
        serving["healthcheck"] = healthcheck
    models: dict[str, Any] = {
        "image": images.models,
        "entrypoint": [
            "sh",
            "-c",
            _stack_escaped(install_script(images.models_digest)) + "exec sleep infinity\n",
        ],
        "user": "0:0",
        "init": True,
        "volumes": [{"type": "volume", "source": MODELS_VOLUME, "target": MODEL_ROOT}],
        "stop_grace_period": "2s",
        "labels": {**labels, LABEL_REVISION: images.models_digest},
        "deploy": {
            "mode": "global",
            "restart_policy": {"condition": "on-failure", "delay": "2s"},
            "update_config": {"parallelism": 0, "order": "stop-first"},
            **({"placement": {"constraints": constraints}} if constraints else {}),
            "labels": {**labels, LABEL_REVISION: images.models_digest},
        },
    }
    door_placement = {"constraints": ["node.role==manager"]} if swarm.door_on_manager else {}
    frontend: dict[str, Any] = {
        "image": images.frontend,
        "configs": [
            {
                "source": haproxy_name,
                "target": "/usr/local/etc/haproxy/haproxy.cfg",
                "mode": 0o444,
            },
            {"source": canary_map_name, "target": CONTAINER_CANARY_MAP, "mode": 0o444},
        ],
        "networks": [NETWORK],
        "ports": [
            {
                "target": CONTAINER_GRPC_PORT,
                "published": spec.serving.grpc_port,
                "protocol": "tcp",
                "mode": "host",
            },
            {
                "target": CONTAINER_REST_PORT,
                "published": spec.serving.rest_port,
                "protocol": "tcp",
                "mode": "host",
            },
        ],
        "stop_grace_period": "12s",
        "labels": labels,
        "deploy": {
            "mode": "replicated",
            "replicas": 1,
            # Host-mode ports: a new door cannot start beside the old one on the same node.
            "update_config": {"order": "stop-first", "failure_action": "rollback"},
            "restart_policy": {"condition": "any", "delay": "1s"},
            **({"placement": door_placement} if door_placement else {}),
            "labels": labels,
        },
    }
    document = {
        "version": STACK_FORMAT,
        "services": {MODELS_SERVICE: models, SERVING_SERVICE: serving, FRONTEND_SERVICE: frontend},
        "networks": {NETWORK: {"driver": "overlay", "attachable": True, "labels": labels}},
        "volumes": {MODELS_VOLUME: {"labels": labels}},
        "configs": configs,
    }
    body = yaml.dump(
        document, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=1000
    )
    usage = f"# docker stack deploy --compose-file {STACK_FILE} {stack}\n"
    files[STACK_FILE] = f"{head}\n{usage}{body}"
    return files


SWARM_HAPROXY_CHECK = dataclasses.replace(
    HAPROXY_CHECK,
    config=f"{SWARM_DIR}/{HAPROXY_FILE}",
    companions=((f"{SWARM_DIR}/{CANARY_MAP_FILE}", CANARY_MAP_FILE),),
)


def check_swarm_door(files: Mapping[str, str], spec: StackSpec, spec_path: Path) -> bool:
    """``haproxy -c`` on the Swarm door's config in the frontend image, as for compose (False
    when the image is not here to run it)."""
    return check_haproxy_config(files, spec, spec_path, check=SWARM_HAPROXY_CHECK)


def models_config_for_image(spec: StackSpec, spec_path: Path, root: Path) -> str:
    """The models.config the model image carries (base paths under /models, like compose)."""
    return render_stack(spec, spec_path, root)[MODELS_CONFIG]


def parse_stack_file(text: str) -> Mapping[str, Any]:
    """The stack file as data (for tests and the deploy step's own checks)."""
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError("a stack file is a mapping")
    return document
