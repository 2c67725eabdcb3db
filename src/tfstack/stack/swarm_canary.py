"""Weighted canaries on a Swarm (``rollout --traffic --target swarm``, docs/swarm.md).

The compose design (:mod:`tfstack.rollout.canary`) carried over to a cluster:

- the candidate's files reach every node in the model image (packed beside the served versions,
  loaded by no server), so the canary can start on any node;
- the *canary service* ``<stack>_canary`` is a clone of the serving service's spec (image, flags,
  volume, limits, placement, health check) with one replica and its own models.config, a Swarm
  config serving the rolled-out model at the candidate version only. It lives beside the stack,
  not in the stack file, so the ``stack deploy --prune`` of the load and promote steps keeps it;
- the door finds its task by DNS (``tasks.<stack>_canary``) and sends the step's share of the
  model's unversioned requests to it; the share is set through the door's runtime API, which
  listens on the door container's loopback, so tfstack runs the command in that container on the
  manager it talks to (the door runs on a manager by default: ``deploy.swarm.door_on_manager``);
- the gates read the canary's and the serving tasks' metrics pages from a probe container on the
  stack's overlay network (tasks have addresses only there).

:func:`plan_canary_service` is pure and unit-tested; the rest talks to the manager.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import docker.errors

from tfstack.core.labels import LABEL_MODEL, LABEL_PROJECT, LABEL_ROLE
from tfstack.core.progress import Say
from tfstack.errors import RolloutError, StackError
from tfstack.render.frontdoor import FRONTEND_SERVICE
from tfstack.render.swarm import NETWORK, canary_service_name
from tfstack.rollout.canary import (
    CONTAINER_CANARY_CONFIG,
    LABEL_CANARY_VERSION,
    ROLE_CANARY,
    WARMUP_ROUNDS,
    DoorShell,
    door_admin,
    warm_up_canary,
    warmup_requests,
)
from tfstack.serving.door import DoorStatus, parse_stats_csv
from tfstack.serving.metrics import Scrape, parse_metrics
from tfstack.spec import StackSpec
from tfstack.stack.swarm import (
    LABEL_BESIDE_STACK,
    STACK_LABEL,
    Manager,
    SwarmError,
    beside_stack_labels,
    canary_service,
    probe_tasks,
    remove_beside_stack,
)

ROLE_METRICS_PROBE = "metrics-probe"
CANARY_POLL_S = 2.0
FETCH_TIMEOUT_S = 5

FETCH_SCRIPT = r"""
import json, socket, sys, urllib.request
out = {}
if sys.argv[1] == "resolve":
    for name in sys.argv[2:]:
        try:
            found = socket.getaddrinfo(name, None, socket.AF_INET)
            out[name] = sorted({a[4][0] for a in found})
        except OSError:
            out[name] = []
elif sys.argv[1] == "post":
    url, body, rounds = sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
    statuses = []
    for _ in range(rounds):
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                r.read()
                statuses.append(r.status)
        except Exception as exc:  # the answer (or why there was none) is reported
            statuses.append(str(getattr(exc, "code", "")) or str(exc)[:200])
    out[url] = {"statuses": statuses}
else:
    timeout = float(sys.argv[1])
    for url in sys.argv[2:]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                out[url] = {"status": r.status, "text": r.read().decode("utf-8", "replace")}
        except Exception as exc:  # every failure is reported by URL
            out[url] = {"error": str(exc)[:300]}
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class CanaryService:
    """The canary service as the Engine API's service create takes it (shown by ``--dry-run``)."""

    name: str
    labels: Mapping[str, str]
    task_template: Mapping[str, Any]
    mode: Mapping[str, Any]
    endpoint_spec: Mapping[str, Any] | None
    update_config: Mapping[str, Any] | None
    rollback_config: Mapping[str, Any] | None

    def describe(self) -> str:
        image = self.task_template.get("ContainerSpec", {}).get("Image", "?")
        return f"canary service {self.name} ({image.split('@')[0]}), 1 replica"


def _with_flag(words: Sequence[str], flag: str, value: str) -> list[str]:
    """``words`` with every ``<flag><old>`` replaced by ``<flag><value>`` (appended if absent)."""
    replaced = [f"{flag}{value}" if str(w).startswith(flag) else str(w) for w in words]
    if not any(w.startswith(flag) for w in replaced):
        replaced.append(f"{flag}{value}")
    return replaced


def plan_canary_service(
    serving: Mapping[str, Any],
    *,
    stack: str,
    project: str,
    model: str,
    version: int,
    config_id: str,
    config_name: str,
) -> CanaryService:
    """A clone of the serving service (``serving``: its ``docker service inspect`` item) with one
    replica whose models.config is the canary's Swarm config.

    Everything that makes a serving task what it is stays (image, entrypoint, flags, the models
    volume, limits, placement, restart policy, hardening, the probe as health check, update
    order); what changes: the name and labels (outside the stack's namespace), the replicas, the
    ``--model_config_file`` and the probe's ``--model-config``, the network alias.
    """
    spec = serving.get("Spec") or {}
    template = copy.deepcopy(dict(spec.get("TaskTemplate") or {}))
    container = template.get("ContainerSpec")
    if not container or not container.get("Image"):
        raise RolloutError(
            f"service {spec.get('Name', '?')} has no container spec to clone",
            model=model,
            version=version,
            step="canary_start",
            hint="`./tfstack up --target swarm` deploys the stack first",
        )
    container["Args"] = _with_flag(
        container.get("Args") or [], "--model_config_file=", CONTAINER_CANARY_CONFIG
    )
    health = container.get("Healthcheck")
    if health and health.get("Test"):
        health["Test"] = _with_flag(health["Test"], "--model-config=", CONTAINER_CANARY_CONFIG)
    container_labels = {
        k: v for k, v in (container.get("Labels") or {}).items() if k != STACK_LABEL
    }
    container["Labels"] = {**container_labels, LABEL_ROLE: ROLE_CANARY, LABEL_MODEL: model}
    container["Configs"] = [
        *(container.get("Configs") or []),
        {
            "File": {"Name": CONTAINER_CANARY_CONFIG, "UID": "0", "GID": "0", "Mode": 0o444},
            "ConfigID": config_id,
            "ConfigName": config_name,
        },
    ]
    # The stack's alias ("serving") would put the canary into tasks.serving: no alias; the door
    # finds it by its service name.
    template["Networks"] = [
        {"Target": n["Target"]} for n in template.get("Networks") or [] if n.get("Target")
    ]
    if not template["Networks"]:
        raise RolloutError(
            f"service {spec.get('Name', '?')} is on no network",
            model=model,
            version=version,
            step="canary_start",
        )
    template.pop("ForceUpdate", None)
    labels = {
        **beside_stack_labels(stack, ROLE_CANARY),
        LABEL_PROJECT: project,
        LABEL_MODEL: model,
        LABEL_CANARY_VERSION: str(version),
    }
    endpoint = spec.get("EndpointSpec")
    return CanaryService(
        name=canary_service_name(stack),
        labels=labels,
        task_template=template,
        mode={"Replicated": {"Replicas": 1}},
        endpoint_spec={"Mode": endpoint["Mode"]} if endpoint and endpoint.get("Mode") else None,
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
    )


def canary_config_name(stack: str, text: str) -> str:
    """The canary models.config's Swarm config name, versioned by content."""
    return f"{stack}-canary-config-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def parse_fetch(text: str) -> dict[str, Any]:
    """The probe's JSON (last line of its output); StackError when there is none."""
    lines = text.strip().splitlines()
    try:
        document = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        raise StackError(f"the overlay probe printed no JSON: {text.strip()[-300:]}")
    return document


def scrapes_from(document: Mapping[str, Any], urls: Sequence[str], at: float) -> list[Scrape]:
    """Parsed metrics pages in ``urls`` order; StackError naming the first page not read."""
    found: list[Scrape] = []
    for url in urls:
        page = document.get(url) or {"error": "no answer"}
        if "error" in page:
            raise StackError(
                f"cannot read metrics from {url} on the overlay: {page['error']}",
                hint="a task may have been replaced: `./tfstack status --target swarm`; "
                "`rollout --resume` measures again",
            )
        if page.get("status") != 200:
            raise StackError(f"metrics at {url} answered HTTP {page.get('status')}")
        found.append(parse_metrics(str(page["text"]), target=url, at=at))
    return found


# --------------------------------------------------------------------------- the manager


def engine_api(url: str) -> Any:
    """The Engine API of the manager (the SDK; the CLI cannot create a service from a spec).
    DOCKER_HOST's own TLS settings apply when ``url`` is DOCKER_HOST, as for the CLI."""
    if url == os.environ.get("DOCKER_HOST"):
        return docker.from_env().api
    return docker.APIClient(base_url=url, use_ssh_client=url.startswith("ssh://"))


def ensure_canary_config(manager: Manager, stack: str, project: str, text: str) -> tuple[str, str]:
    """The canary models.config as a Swarm config (reused when the same text exists): id, name."""
    name = canary_config_name(stack, text)
    found = manager.run("config", "inspect", "--format", "{{.ID}}", name, check=False)
    if found and " " not in found:
        return found, name
    labels = {**beside_stack_labels(stack, ROLE_CANARY), LABEL_PROJECT: project}
    flags = [f"--label={k}={v}" for k, v in labels.items()]
    config_id = manager.run("config", "create", *flags, name, "-", stdin=text)
    return config_id.strip(), name


def start_canary_service(manager: Manager, plan: CanaryService, *, say: Say) -> None:
    """Create the canary service (a running one for another version is removed first)."""
    current = canary_service(manager, plan.labels[LABEL_BESIDE_STACK])
    if current is not None:
        if (
            current.labels.get(LABEL_CANARY_VERSION) == plan.labels[LABEL_CANARY_VERSION]
            and current.labels.get(LABEL_MODEL) == plan.labels[LABEL_MODEL]
        ):
            say(f"      {plan.name}: already serving version {plan.labels[LABEL_CANARY_VERSION]}")
            return
        remove_beside_stack(manager, plan.labels[LABEL_BESIDE_STACK], role=ROLE_CANARY)
    try:
        engine_api(manager.url).create_service(
            dict(plan.task_template),
            name=plan.name,
            labels=dict(plan.labels),
            mode=dict(plan.mode),
            endpoint_spec=dict(plan.endpoint_spec) if plan.endpoint_spec else None,
            update_config=dict(plan.update_config) if plan.update_config else None,
            rollback_config=dict(plan.rollback_config) if plan.rollback_config else None,
        )
    except docker.errors.DockerException as exc:
        raise SwarmError(
            f"the manager at {manager.url} refused the canary service: {exc}",
            service=plan.name,
        ) from exc
    say(f"      created {plan.describe()}")


def _task_errors(manager: Manager, service: str) -> list[str]:
    text = manager.run(
        "service",
        "ps",
        "--no-trunc",
        "--format",
        "{{.Node}} {{.CurrentState}} {{.Error}}",
        service,
        check=False,
    )
    return [line for line in text.splitlines()[:5] if line.strip()]


def wait_canary_serving(
    manager: Manager,
    spec: StackSpec,
    stack: str,
    image: str,
    *,
    model: str,
    version: int,
    timeout: float,
    say: Say,
) -> str:
    """Until the canary's task serves ``model`` at ``version`` AVAILABLE; its address."""
    service = canary_service_name(stack)
    deadline = time.monotonic() + timeout
    while True:
        answers, error = probe_tasks(manager, image, stack, spec, service=service)
        if error is None and len(answers) == 1:
            gaps = answers[0].missing({model: (version,)})
            if not gaps:
                return answers[0].address
            last = ", ".join(gaps)
        else:
            last = error or f"{len(answers)} canary tasks answer (1 expected)"
        if time.monotonic() > deadline:
            raise RolloutError(
                f"the canary service {service} did not serve version {version} AVAILABLE "
                f"within {timeout:.0f} s: {last}",
                model=model,
                version=version,
                step="canary_start",
                evidence=_task_errors(manager, service),
                hint=f"`docker --host {manager.url} service ps --no-trunc {service}`",
            )
        say(f"      waiting for the canary: {last}")
        time.sleep(CANARY_POLL_S)


# --------------------------------------------------------------------------- the door


@dataclass(frozen=True)
class SwarmDoorShell:
    """The door's container on the manager tfstack talks to, reached with ``docker exec``."""

    manager: Manager
    container_id: str
    node: str

    @property
    def name(self) -> str:
        return f"the door's container {self.container_id[:12]} on node {self.node}"

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        try:
            result = subprocess.run(
                self.manager.argv("exec", self.container_id, *argv),
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{self.name}: the runtime API did not answer in 30 s") from exc
        return result.returncode, result.stdout + result.stderr


def swarm_door(manager: Manager, stack: str) -> SwarmDoorShell:
    """The running door task's container, which must run on the manager tfstack talks to (its
    runtime API listens only inside it); StackError naming the node otherwise."""
    service = f"{stack}_{FRONTEND_SERVICE}"
    ids = manager.run(
        "service",
        "ps",
        "--quiet",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        service,
        check=False,
    ).split()
    running = []
    for item in (
        json.loads(manager.run("inspect", "--type", "task", *ids, check=False) or "[]")
        if ids
        else []
    ):
        status = item.get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        if status.get("State") == "running" and container:
            running.append((item.get("NodeID", ""), container))
    if not running:
        raise StackError(
            "the stack's front door has no running task",
            service=service,
            hint=f"`docker --host {manager.url} service ps --no-trunc {service}`",
        )
    here = manager.run("info", "--format", "{{.Swarm.NodeID}}", check=False)
    node_id, container_id = running[0]
    node = manager.run(
        "node", "inspect", "--format", "{{.Description.Hostname}}", node_id, check=False
    )
    if node_id != here:
        raise StackError(
            f"the door runs on node {node or node_id}, not on the manager at {manager.url}: "
            "its runtime API (the canary's share) is reached only inside its container",
            service=service,
            hint="point deploy.swarm.manager (or DOCKER_HOST) at that node's engine, or keep "
            "deploy.swarm.door_on_manager: true with one manager",
        )
    return SwarmDoorShell(manager, container_id, node or node_id)


class CachedSwarmDoor:
    """The stack's door shell for one rollout process: looked up once (:func:`swarm_door`, four
    CLI calls) and again when a command fails in it, because the door's task may have been
    rescheduled (a new container, perhaps on another node). A command that failed in a container
    that is no longer the door's runs once more in the new one: the runtime API lines tfstack
    sends (set a share, show stat) may be repeated. Never journaled: ``--resume`` runs in
    another process, which looks the door up itself."""

    def __init__(
        self,
        manager: Manager,
        stack: str,
        resolve: Callable[[Manager, str], SwarmDoorShell] = swarm_door,
    ) -> None:
        self.manager = manager
        self.stack = stack
        self._resolve = resolve
        self.shell = resolve(manager, stack)

    @property
    def name(self) -> str:
        return self.shell.name

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        used = self.shell
        exit_code, output = used.run(argv)
        if exit_code == 0:
            return exit_code, output
        self.shell = self._resolve(self.manager, self.stack)
        if self.shell.container_id == used.container_id:
            return exit_code, output  # still the door's container: the command itself failed
        return self.shell.run(argv)


def door_status(door: DoorShell, names_by_ip: Mapping[str, str]) -> DoorStatus:
    """The door's view of its servers (``show stat`` through the runtime API)."""
    try:
        text = door_admin(door, "show stat")
    except StackError as exc:
        return DoorStatus(door.name, "running", error=exc.message)
    return DoorStatus(door.name, "running", tuple(parse_stats_csv(text, names_by_ip)))


# --------------------------------------------------------------------------- metrics on the overlay


class OverlayProbe:
    """A container on the stack's overlay network (on the manager) that resolves task names and
    reads metrics pages there: the gates' view of tasks that have no address on this host."""

    def __init__(self, manager: Manager, stack: str, project: str, image: str) -> None:
        self.manager = manager
        self.name = f"{stack}-{ROLE_METRICS_PROBE}"
        self.stack = stack
        self.project = project
        self.image = image

    def __enter__(self) -> OverlayProbe:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.remove()

    def start(self) -> None:
        """Run the container (one left by an earlier run goes first); SwarmError if it fails."""
        self.manager.run("rm", "--force", self.name, check=False)
        labels = {
            **beside_stack_labels(self.stack, ROLE_METRICS_PROBE),
            LABEL_PROJECT: self.project,
        }
        self.manager.run(
            "run",
            "--detach",
            f"--name={self.name}",
            f"--network={self.stack}_{NETWORK}",
            *(f"--label={k}={v}" for k, v in labels.items()),
            "--entrypoint=sleep",
            self.image,
            "86400",
            timeout=120,
        )

    def remove(self) -> None:
        self.manager.run("rm", "--force", self.name, check=False)

    def _exec(self, *args: str) -> dict[str, Any]:
        output = self.manager.run(
            "exec", self.name, "python3", "-c", FETCH_SCRIPT, *args, check=False, timeout=60
        )
        return parse_fetch(output)

    def resolve(self, *names: str) -> dict[str, list[str]]:
        """Each DNS name -> its addresses on the overlay (``tasks.<service>``: every task)."""
        document = self._exec("resolve", *names)
        return {name: [str(ip) for ip in document.get(name) or []] for name in names}

    def post(self, url: str, body: Mapping[str, Any], rounds: int) -> list[Any]:
        """POST ``body`` to ``url`` ``rounds`` times on the overlay; each answer's status."""
        document = self._exec("post", url, json.dumps(body), str(rounds))
        return list((document.get(url) or {}).get("statuses") or [])

    def read(self, urls: Sequence[str], at: float) -> list[Scrape]:
        """:data:`tfstack.rollout.canary.MetricsReader` over the overlay."""
        return scrapes_from(self._exec(str(FETCH_TIMEOUT_S), *urls), urls, at)


def warm_canary(
    probe: OverlayProbe,
    spec: StackSpec,
    spec_path: Path,
    address: str,
    *,
    model: str,
    version: int,
    rounds: int = WARMUP_ROUNDS,
) -> int:
    """Send the model's samples to the canary's task (version ``version``) from the overlay
    probe before it takes traffic: the step both targets share (rollout.canary.warm_up_canary).
    RolloutError when a sample is not answered 200."""
    base = f"http://{address}:{spec.serving.rest_port}"
    return warm_up_canary(
        lambda path, body, count: probe.post(base + path, body, count),
        warmup_requests(spec, spec_path, model=model, version=version),
        model=model,
        version=version,
        canary=f"the canary service {probe.stack}_canary",
        logs=f"docker service logs {probe.stack}_canary",
        rounds=rounds,
    )


def remove_canary_service(manager: Manager, stack: str) -> str:
    """Drain (each task stops with its grace period) and remove the canary service and config."""
    removed = remove_beside_stack(manager, stack, role=ROLE_CANARY)
    with contextlib.suppress(SwarmError):
        remove_beside_stack(manager, stack, role=ROLE_METRICS_PROBE)
    return ", ".join(removed) + " removed" if removed else "no canary service left"


__all__ = [
    "CachedSwarmDoor",
    "CanaryService",
    "OverlayProbe",
    "SwarmDoorShell",
    "canary_config_name",
    "door_status",
    "ensure_canary_config",
    "plan_canary_service",
    "remove_canary_service",
    "start_canary_service",
    "swarm_door",
    "wait_canary_serving",
    "warm_canary",
]
