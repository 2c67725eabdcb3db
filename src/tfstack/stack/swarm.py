"""``up | status | down --target swarm``: the stack on a Docker Swarm (docs/swarm.md).

Plan, then apply: :func:`prepare_swarm` validates (with the swarm rules), packs and pushes the
model image, pushes the serving and door images and renders ``compose/stack.yml``; :func:`swarm_up`
then checks the manager and the placement, deploys with ``docker stack deploy``, waits until every
task serves every declared version (asked per task on the overlay, never through the balancer) and
smoke-tests through the door. A second ``up`` changes nothing (content-addressed images and
configs); a models-only change is a new model image: the ``models`` service copies it into each
node's volume and every server re-reads models.config (hot reload, no restart).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tfstack.build.modelimage import (
    MODEL_IMAGE_ROLE,
    ROLE_LABEL,
    ModelImagePlan,
    build_model_image,
    local_image_id,
    model_base_image,
    model_image_tag,
    model_repository_name,
    parse_engine_images,
    plan_model_image,
    prune_model_images,
    push_image,
    remove_image_references,
    stale_engine_references,
    tag_image,
)
from tfstack.build.registrypush import prune_registry_repository, push_uncompressed
from tfstack.cluster.apply import (
    ClusterError,
    cluster_status,
    collect_registry_garbage,
    node_containers,
)
from tfstack.cluster.plan import CLUSTER_NAME, MANAGER_API_PORT
from tfstack.core.files import FileChange, plan_files, write_files_atomically
from tfstack.core.labels import LABEL_MANAGED, LABEL_MODEL, LABEL_NAMESPACE, LABEL_ROLE
from tfstack.errors import BuildError, StackError
from tfstack.render import RenderReport
from tfstack.render.frontdoor import FRONTEND_SERVICE, SERVING_SERVICE
from tfstack.render.swarm import (
    MODELS_SERVICE,
    NETWORK,
    STACK_FILE,
    SwarmImages,
    canary_service_name,
    check_swarm_door,
    models_config_for_image,
    render_swarm,
    stack_name,
)
from tfstack.rollout.canary import LABEL_CANARY_VERSION
from tfstack.rollout.journal import status_summary
from tfstack.serving.client import GrpcClient, ModelRef, RestClient
from tfstack.spec import StackSpec
from tfstack.spec.load import check_spec
from tfstack.stack.plan import Loaded, load
from tfstack.stack.smoke import raise_for_smoke, smoke
from tfstack.stack.swarm_probe import PROBE_SCRIPT, TaskModels, parse_probe

Say = Callable[[str], None]
LABEL_BESIDE_STACK = f"{LABEL_NAMESPACE}.beside-stack"
# Task states in which a container may still run (Swarm's task lifecycle).
ACTIVE_TASK_STATES = frozenset(
    {"New", "Pending", "Assigned", "Accepted", "Preparing", "Ready", "Starting", "Running"}
)
COMMAND_TIMEOUT_S = 300
POLL_S = 2.0
STACK_LABEL = "com.docker.stack.namespace"
MODEL_ROLE_LABEL = f"{ROLE_LABEL}={MODEL_IMAGE_ROLE}"


def _quiet(_: str) -> None:
    return None


class SwarmError(StackError):
    """A Swarm step failed; names the service or node and what to do."""


# --------------------------------------------------------------------------- the manager


def manager_url(spec: StackSpec) -> str:
    """``deploy.swarm.manager``, else DOCKER_HOST, else the local cluster's manager."""
    if spec.deploy.swarm.manager:
        return spec.deploy.swarm.manager
    return os.environ.get("DOCKER_HOST") or f"tcp://127.0.0.1:{MANAGER_API_PORT}"


def door_host(url: str) -> str:
    """Where this machine reaches the door: the manager's host (127.0.0.1 for a local one)."""
    parsed = urlparse(url)
    if parsed.scheme in {"tcp", "ssh", "http", "https"} and parsed.hostname:
        return parsed.hostname
    return "127.0.0.1"


@dataclass(frozen=True)
class Manager:
    """The docker CLI pointed at one Swarm manager."""

    url: str

    def argv(self, *args: str) -> list[str]:
        return ["docker", "--host", self.url, *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: int = COMMAND_TIMEOUT_S,
        stdin: str | None = None,
    ) -> str:
        try:
            result = subprocess.run(
                self.argv(*args),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                input=stdin,
            )
        except subprocess.TimeoutExpired as exc:
            raise SwarmError(f"`docker {' '.join(args[:3])}` took over {timeout} s") from exc
        if check and result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-4:])
            raise SwarmError(f"`docker {' '.join(args[:3])}` on {self.url} failed: {tail}")
        return result.stdout.strip()

    def check(self) -> None:
        """The manager answers and is a Swarm manager; SwarmError naming it otherwise."""
        try:
            state = self.run(
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
                timeout=20,
            )
        except SwarmError as exc:
            raise SwarmError(
                f"no Swarm manager reachable at {self.url}: {exc.message}",
                hint="start the local cluster (`./tfstack cluster.up --nodes 3`), or set "
                "DOCKER_HOST / deploy.swarm.manager to a manager of your Swarm",
            ) from exc
        if state != "active true":
            raise SwarmError(
                f"{self.url} is not a Swarm manager (state: {state or 'unknown'})",
                hint="point DOCKER_HOST or deploy.swarm.manager at a manager node",
            )


@dataclass(frozen=True)
class NodeInfo:
    id: str
    hostname: str
    role: str
    state: str
    availability: str


def nodes(manager: Manager) -> list[NodeInfo]:
    ids = manager.run("node", "ls", "--quiet").split()
    found = []
    for item in json.loads(manager.run("node", "inspect", *ids) or "[]"):
        found.append(
            NodeInfo(
                id=item["ID"],
                hostname=item["Description"]["Hostname"],
                role=item["Spec"]["Role"],
                state=item["Status"]["State"],
                availability=item["Spec"]["Availability"],
            )
        )
    return sorted(found, key=lambda n: n.hostname)


def check_placement(spec: StackSpec, available: Sequence[NodeInfo]) -> None:
    """Enough usable nodes for the replicas under ``max_replicas_per_node`` (pure)."""
    usable = [n for n in available if n.state == "ready" and n.availability == "active"]
    limit = spec.deploy.swarm.max_replicas_per_node
    replicas = spec.serving.replicas
    if not usable:
        raise SwarmError("no ready, active node in the Swarm", service=SERVING_SERVICE)
    if limit and replicas > limit * len(usable):
        raise SwarmError(
            f"{replicas} replicas need more than the {len(usable)} usable node(s) x "
            f"max_replicas_per_node {limit} = {limit * len(usable)} places",
            service=SERVING_SERVICE,
            hint="lower serving.replicas, raise deploy.swarm.max_replicas_per_node or add nodes",
        )


# --------------------------------------------------------------------------- prepare


@dataclass
class Prepared:
    loaded: Loaded
    files: dict[str, str]
    images: SwarmImages
    stack: str


def _image_tag(image_id: str) -> str:
    return "id-" + image_id.removeprefix("sha256:")[:16]


def _repository(image: str) -> str:
    last = image.rsplit("/", 1)
    name = image
    if ":" in last[-1]:
        name = image.rsplit(":", 1)[0]
    return name


def prepare_swarm(
    spec_path: Path,
    root: Path,
    *,
    push: bool = True,
    say: Say = _quiet,
    extra_versions: Mapping[str, Sequence[int]] | None = None,
) -> Prepared:
    """Validate for swarm, build and push the images, render the stack file (not written).

    ``extra_versions``: versions packed into the model image beside the served ones, which no
    server loads (a weighted canary's candidate reaches every node's volume this way).
    """
    report = check_spec(spec_path, check_disk=True, project_root=root, target="swarm")
    report.raise_for_problems()
    loaded = load(spec_path, root)
    spec = loaded.spec
    swarm = spec.deploy.swarm
    models_config = models_config_for_image(spec, spec_path, root)
    served = {e.name: e.versions for e in loaded.expectations}
    for model, versions in (extra_versions or {}).items():
        served[model] = tuple(sorted({*served.get(model, ()), *versions}))
    plan = plan_model_image(
        spec, spec_path, served, models_config, base_image=model_base_image(spec.serving.image)
    )
    pull, push_to = swarm.registry, swarm.push_to()
    serving_tag = _image_tag(local_image_id(spec.serving.image))
    frontend_tag = _image_tag(local_image_id(spec.frontend.image))
    serving_repo = _repository(spec.serving.image)
    frontend_repo = _repository(spec.frontend.image)
    refs = {
        "serving": f"{serving_repo}:{serving_tag}",
        "frontend": f"{frontend_repo}:{frontend_tag}",
        "models": f"{plan.repository}:{plan.tag}",
    }
    if push:
        _push_images(spec, plan, refs, push_to, say=say)
    images = SwarmImages(
        serving=f"{pull}/{refs['serving']}",
        frontend=f"{pull}/{refs['frontend']}",
        models=f"{pull}/{refs['models']}",
        models_digest=plan.digest,
    )
    files = render_swarm(spec, spec_path, root, images)
    check_swarm_door(files, spec, spec_path)  # validated before anything is written or deployed
    return Prepared(loaded, files, images, stack_name(spec))


def _repository_and_tag(reference: str) -> tuple[str, str]:
    repository, _, tag = reference.rpartition(":")
    return repository, tag


def _push_images(
    spec: StackSpec, plan: ModelImagePlan, refs: Mapping[str, str], push_to: str, *, say: Say
) -> None:
    """Build the model image and push the three images; the runtime and the door in parallel
    (each push is mostly one core's work), the model image after the runtime (it shares the
    runtime's layers, which are then linked instead of sent)."""
    local_models = f"{plan.repository}:{plan.tag}"
    layers = spec.deploy.swarm.layer_push()

    def push(local: str, ref: str, share: Sequence[str] = ()) -> None:
        mark = time.monotonic()
        try:
            if layers == "uncompressed":
                # The pushed name on this engine too, as `docker push` leaves it (what went where).
                tag_image(local, f"{push_to}/{ref}")
                push_uncompressed(
                    local,
                    local_image_id(local),
                    push_to,
                    *_repository_and_tag(ref),
                    share_from=[_repository_and_tag(s) for s in share],
                    say=say,
                )
            else:
                push_image(local, f"{push_to}/{ref}", say=say)
        except (BuildError, OSError) as exc:
            raise SwarmError(
                f"the registry {push_to} refused {ref}: {exc}",
                hint="check that the registry runs and accepts pushes "
                "(`./tfstack cluster.status`), or deploy.swarm.push_registry / layers",
            ) from exc
        say(f"pushed {ref} in {time.monotonic() - mark:.1f} s")

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tfstack-push") as pool:
        serving = pool.submit(push, spec.serving.image, refs["serving"])
        frontend = pool.submit(push, spec.frontend.image, refs["frontend"])
        build_model_image(plan, local_models, say=say)
        serving.result()
        models = pool.submit(push, local_models, refs["models"], (refs["serving"],))
        frontend.result()
        models.result()


def render_swarm_to_disk(spec_path: Path, root: Path, *, dry_run: bool = False) -> RenderReport:
    """``render --target swarm``: the stack file and its configs, written atomically (no push)."""
    prepared = prepare_swarm(spec_path, root, push=False)
    changes = plan_files(root, prepared.files)
    written = [] if dry_run else write_files_atomically(root, prepared.files)
    return RenderReport(changes=changes, written=written, dry_run=dry_run)


def swarm_plan(spec_path: Path, root: Path) -> list[FileChange]:
    """``plan --target swarm``: the diff of the stack file and its configs against the ones the
    last ``up`` deployed (a changed model image, image or config shows as its new reference)."""
    prepared = prepare_swarm(spec_path, root, push=False)
    return plan_files(root, prepared.files)


def swarm_predict(
    spec_path: Path,
    ref: ModelRef,
    body: Mapping[str, Any],
    *,
    grpc: bool = False,
    signature: str | None = None,
) -> dict[str, Any]:
    """``predict --target swarm``: one request through the door on the manager's host."""
    spec = check_spec(spec_path, check_disk=False).raise_for_problems()
    host = door_host(manager_url(spec))
    rest_url = f"http://{host}:{spec.serving.rest_port}"
    try:
        if grpc:
            with GrpcClient(f"{host}:{spec.serving.grpc_port}") as grpc_client:
                return grpc_client.predict_json(ref, body, signature=signature)
        with RestClient(rest_url) as rest:
            return rest.predict(ref, body, signature=signature)
    except (OSError, ConnectionError) as exc:
        raise SwarmError(
            f"the door of the Swarm stack does not answer at {rest_url}: {exc}",
            service=FRONTEND_SERVICE,
            hint="`./tfstack status --target swarm`; deploy with `./tfstack up --target swarm`",
        ) from exc


def door_ports_of(spec_path: Path) -> tuple[int, ...]:
    """The ports the door publishes (the local cluster's manager publishes them on 127.0.0.1)."""
    spec = check_spec(spec_path, check_disk=False).raise_for_problems()
    return (spec.serving.grpc_port, spec.serving.rest_port)


# --------------------------------------------------------------------------- observe


@dataclass
class TaskInfo:
    id: str
    service: str
    node: str
    state: str
    desired: str
    error: str
    addresses: tuple[str, ...]
    image: str


def tasks(manager: Manager, stack: str, node_names: Mapping[str, str]) -> list[TaskInfo]:
    ids = manager.run("stack", "ps", "--quiet", "--no-trunc", stack, check=False).split()
    if not ids:
        return []
    found: list[TaskInfo] = []
    for item in json.loads(manager.run("inspect", "--type", "task", *ids, check=False) or "[]"):
        addresses = tuple(
            address.split("/")[0]
            for attachment in item.get("NetworksAttachments") or []
            for address in attachment.get("Addresses") or []
        )
        service = item.get("Spec", {}).get("ContainerSpec", {}).get("Labels", {}) or {}
        found.append(
            TaskInfo(
                id=item["ID"][:12],
                service=str(item.get("ServiceID", "")),
                node=node_names.get(item.get("NodeID", ""), item.get("NodeID", "")[:12]),
                state=item["Status"]["State"],
                desired=item.get("DesiredState", ""),
                error=item["Status"].get("Err", ""),
                addresses=addresses,
                image=item.get("Spec", {}).get("ContainerSpec", {}).get("Image", "").split("@")[0],
            )
        )
        del service
    return found


def service_ids(manager: Manager, stack: str) -> dict[str, str]:
    """Service name (without the stack prefix) -> service ID."""
    text = manager.run(
        "service",
        "ls",
        "--filter",
        f"label={STACK_LABEL}={stack}",
        "--format",
        "{{.ID}} {{.Name}}",
        check=False,
    )
    out: dict[str, str] = {}
    for line in text.splitlines():
        sid, _, name = line.partition(" ")
        out[name.removeprefix(f"{stack}_")] = sid
    return out


@dataclass(frozen=True)
class InspectedService:
    """One service as ``docker service inspect`` shows it; ``item`` whole, because the canary
    service is cloned from the serving service's spec."""

    item: Mapping[str, Any]

    @property
    def labels(self) -> Mapping[str, str]:
        return dict((self.item.get("Spec") or {}).get("Labels") or {})

    @property
    def image(self) -> str:
        return str(self.item["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])


def inspect_service(manager: Manager, name: str) -> InspectedService | None:
    """The service called ``name`` on the manager, or None when there is none."""
    # No such service (or no answer): exit 1, "[]" or nothing on stdout, the reason on stderr.
    text = manager.run("service", "inspect", name, check=False)
    items = json.loads(text) if text.startswith("[") else []
    return InspectedService(items[0]) if items else None


def serving_service(manager: Manager, stack: str) -> InspectedService | None:
    """The stack's serving service (``<stack>_serving``), or None when it is not deployed."""
    return inspect_service(manager, f"{stack}_{SERVING_SERVICE}")


def canary_service(manager: Manager, stack: str) -> InspectedService | None:
    """The weighted canary's service beside the stack (``<stack>_canary``), or None."""
    return inspect_service(manager, canary_service_name(stack))


def service_specs(manager: Manager, stack: str) -> dict[str, str]:
    """Service name -> sha256 of its spec. ``docker stack deploy`` updates every service (each
    Version.Index moves even when nothing changed), so what tells a noop is an unchanged spec."""
    ids = service_ids(manager, stack)
    if not ids:
        return {}
    data = json.loads(manager.run("service", "inspect", *ids.values()) or "[]")
    # `service ls` prints short IDs, `service inspect` full ones.
    digests = {
        item["ID"]: hashlib.sha256(
            json.dumps(item.get("Spec", {}), sort_keys=True).encode("utf-8")
        ).hexdigest()
        for item in data
    }
    return {
        name: next((d for full, d in digests.items() if full.startswith(sid)), "")
        for name, sid in ids.items()
    }


def probe_tasks(
    manager: Manager,
    prepared_image: str,
    stack: str,
    spec: StackSpec,
    *,
    service: str = SERVING_SERVICE,
) -> tuple[list[TaskModels], str | None]:
    """Ask every task of ``service`` on the overlay (helper container on the manager)."""
    output = manager.run(
        "run",
        "--rm",
        f"--network={stack}_{NETWORK}",
        "--label=org.tfstack.managed=true",
        f"--label=org.tfstack.project={spec.project}",
        "--label=org.tfstack.role=swarm-probe",
        "--entrypoint=python3",
        prepared_image,
        "-c",
        PROBE_SCRIPT,
        service,
        str(spec.serving.rest_port),
        ",".join(m.name for m in spec.models),
        ",".join(f"{m.name}:{label}" for m in spec.models for label in sorted(m.labels)),
        check=False,
        timeout=120,
    )
    return parse_probe(output)


# --------------------------------------------------------------------------- up


@dataclass
class SwarmUpReport:
    action: str  # "deploy" | "update" | "noop"
    stack: str
    manager: str
    timings: dict[str, float] = field(default_factory=dict)
    per_node: dict[str, int] = field(default_factory=dict)
    tasks: list[TaskModels] = field(default_factory=list)
    door: str = ""
    smoke_requests: int = 0

    def describe(self) -> list[str]:
        spread = ", ".join(f"{node}: {count}" for node, count in sorted(self.per_node.items()))
        lines = [
            f"stack {self.stack} on {self.manager}: {self.action}",
            f"serving tasks per node: {spread}",
            f"door: {self.door} ({self.smoke_requests} smoke requests OK)",
        ]
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        lines.append(f"done in {sum(self.timings.values()):.1f}s ({timings})")
        return lines


def _wait_converged(
    manager: Manager, prepared: Prepared, node_names: Mapping[str, str], timeout: float, say: Say
) -> tuple[list[TaskModels], dict[str, int], float]:
    """Every serving task's answers, tasks per node and when (monotonic) every task first ran."""
    spec = prepared.loaded.spec
    stack = prepared.stack
    expected = {e.name: e.versions for e in prepared.loaded.expectations}
    labels = {e.name: dict(e.labels) for e in prepared.loaded.expectations if e.labels}
    ids = service_ids(manager, stack)
    serving_id = ids.get(SERVING_SERVICE, "")
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    all_running: float | None = None
    while True:
        current = [
            t
            for t in tasks(manager, stack, node_names)
            if serving_id and t.service.startswith(serving_id)
        ]
        running = [t for t in current if t.desired == "running" and t.state == "running"]
        failed = [t for t in current if t.error and t.desired == "running"]
        per_node: dict[str, int] = {}
        for task in running:
            per_node[task.node] = per_node.get(task.node, 0) + 1
        old = [t for t in running if t.image != prepared.images.serving]
        if len(running) == spec.serving.replicas and not old:
            all_running = all_running or time.monotonic()
            answers, error = probe_tasks(manager, prepared.images.serving, stack, spec)
            if error is None and len(answers) == spec.serving.replicas:
                gaps = {a.address: a.missing(expected, labels) for a in answers}
                if not any(gaps.values()):
                    return answers, per_node, all_running
                last = "; ".join(f"{k}: {', '.join(v)}" for k, v in gaps.items() if v)
            else:
                last = error or f"{len(answers)} of {spec.serving.replicas} tasks answer"
        else:
            last = f"{len(running)}/{spec.serving.replicas} serving tasks running"
            if failed:
                last += "; " + "; ".join(f"{t.node}: {t.error}" for t in failed[-3:])
        if time.monotonic() > deadline:
            raise SwarmError(
                f"not every task serves every declared version after {timeout:.0f} s: {last}",
                service=SERVING_SERVICE,
                hint=f"`docker --host {manager.url} service ps --no-trunc {stack}_serving`",
            )
        say(f"waiting: {last}")
        time.sleep(POLL_S)


def _remove_stale_configs(manager: Manager, stack: str, files: Mapping[str, str]) -> list[str]:
    text = files[STACK_FILE]
    names = manager.run(
        "config",
        "ls",
        "--filter",
        f"label={STACK_LABEL}={stack}",
        "--format",
        "{{.Name}}",
        check=False,
    ).split()
    removed = []
    for name in names:
        if name not in text and manager.run("config", "rm", name, check=False):
            removed.append(name)
    return removed


def swarm_up(
    spec_path: Path,
    root: Path,
    *,
    timeout: float = 300.0,
    dry_run: bool = False,
    say: Say = _quiet,
    extra_versions: Mapping[str, Sequence[int]] | None = None,
) -> SwarmUpReport:
    """Validate, push, deploy, wait per task, smoke through the door; idempotent.

    ``extra_versions``: see :func:`prepare_swarm`.
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    spec = check_spec(
        spec_path, check_disk=True, project_root=root, target="swarm"
    ).raise_for_problems()
    manager = Manager(manager_url(spec))
    manager.check()
    node_list = nodes(manager)
    check_placement(spec, node_list)
    timings["check"] = time.monotonic() - started
    mark = time.monotonic()
    prepared = prepare_swarm(
        spec_path, root, push=not dry_run, say=say, extra_versions=extra_versions
    )
    timings["images"] = time.monotonic() - mark
    if dry_run:
        return SwarmUpReport("dry-run", prepared.stack, manager.url, timings)
    write_files_atomically(root, prepared.files)
    stack = prepared.stack
    before = service_specs(manager, stack)
    mark = time.monotonic()
    say(f"deploying stack {stack} to {manager.url}")
    try:
        manager.run("stack", "deploy", "--prune", "--compose-file", str(root / STACK_FILE), stack)
    except SwarmError:
        if not before:
            manager.run("stack", "rm", stack, check=False)
        raise
    after = service_specs(manager, stack)
    action = "deploy" if not before else ("noop" if after == before else "update")
    timings["deploy"] = time.monotonic() - mark
    mark = time.monotonic()
    names = {n.id: n.hostname for n in node_list}
    try:
        answers, per_node, all_running = _wait_converged(manager, prepared, names, timeout, say)
    except SwarmError:
        if not before:
            say("first deploy failed: removing the stack (nothing half-deployed)")
            manager.run("stack", "rm", stack, check=False)
        raise
    # tasks: pulls, container starts and health checks; verify: every version asked per task
    timings["tasks"] = all_running - mark
    timings["verify"] = time.monotonic() - all_running
    mark = time.monotonic()
    door = f"http://{door_host(manager.url)}:{spec.serving.rest_port}"
    results = _smoke_door(prepared.loaded, door, timeout=60)
    timings["smoke"] = time.monotonic() - mark
    _remove_stale_configs(manager, stack, prepared.files)
    _prune_model_images(spec, prepared.images.models_digest, say=say)
    return SwarmUpReport(action, stack, manager.url, timings, per_node, answers, door, len(results))


def _local_cluster(spec: StackSpec) -> bool:
    """The stack runs on this machine's local cluster (whose nodes and registry tfstack reaches)."""
    status = cluster_status(CLUSTER_NAME)
    return status.exists and manager_url(spec) == status.manager_url


def _prune_model_images(spec: StackSpec, models_digest: str, *, say: Say) -> None:
    """Every models change is a new model image: keep the deployed one and the one before it (a
    rollback finds it), remove older ones of this project (never other projects') from this
    machine's engine, from the registry when tfstack talks to it itself (plain HTTP, the
    ``uncompressed`` push path) and, on the local cluster, from every node's engine. Never fatal:
    what stays is said."""
    repository = model_repository_name(spec.project)
    current = model_image_tag(models_digest)
    try:
        prune_model_images(repository, current, say=say)
    except BuildError as exc:
        say(f"old model images not pruned on this machine: {exc}")
    local = _local_cluster(spec)
    if spec.deploy.swarm.layer_push() == "uncompressed":
        try:
            deleted = prune_registry_repository(
                spec.deploy.swarm.push_to(), repository, current, say=say
            )
            if deleted and local:
                freed = collect_registry_garbage(CLUSTER_NAME)
                say(f"registry garbage collection: {freed} blob(s) deleted")
        except (BuildError, ClusterError) as exc:
            say(f"old model images not pruned from the registry: {exc}")
    if local:
        for node in node_containers(CLUSTER_NAME):
            prune_node_model_images(node, repository, current, say=say)


def prune_node_model_images(node: str, repository: str, current_tag: str, *, say: Say) -> list[str]:
    """Remove ``repository``'s older model images from a local cluster node's engine (through its
    container; :func:`stale_engine_references`); the references removed. One a container still
    uses (Swarm keeps the task history's stopped containers) is kept and said."""
    engine = ["docker", "exec", node, "docker"]
    listing = subprocess.run(
        [*engine, "image", "ls", "--quiet", "--no-trunc", "--filter", f"label={MODEL_ROLE_LABEL}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    ids = sorted(set(listing.stdout.split()))
    if listing.returncode != 0 or not ids:
        return []
    inspected = subprocess.run(
        [*engine, "image", "inspect", *ids],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    stale = stale_engine_references(
        parse_engine_images(inspected.stdout), repository=repository, current_tag=current_tag
    )
    return remove_image_references(engine, stale, repository=repository, say=say, where=node)


def _smoke_door(loaded: Loaded, door: str, *, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        with RestClient(door, timeout=30) as rest:
            try:
                results = smoke(loaded, rest, replica="door")
                raise_for_smoke(results)
                return results
            except StackError:
                if time.monotonic() > deadline:
                    raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(POLL_S)


# --------------------------------------------------------------------------- status


@dataclass
class SwarmStatus:
    stack: str
    manager: str
    endpoint_mode: str
    nodes: list[NodeInfo]
    tasks: list[TaskInfo]
    services: dict[str, str]
    per_task: list[TaskModels]
    probe_error: str | None
    door: str
    door_ok: bool
    expected: dict[str, tuple[int, ...]]
    expected_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    canary: dict[str, Any] | None = None  # a weighted canary's service while one runs
    rollout: Mapping[str, Any] | None = None  # unfinished rollouts (journals), as for compose

    @property
    def ok(self) -> bool:
        return (
            self.door_ok
            and self.probe_error is None
            and bool(self.per_task)
            and not any(t.missing(self.expected, self.expected_labels) for t in self.per_task)
        )

    def to_json(self) -> dict[str, Any]:
        by_address = {t.address: t for t in self.per_task}
        serving = self.services.get(SERVING_SERVICE, "")
        return {
            "target": "swarm",
            "stack": self.stack,
            "manager": self.manager,
            "endpoint_mode": self.endpoint_mode,
            "ok": self.ok,
            "nodes": [n.__dict__ for n in self.nodes],
            "tasks": [
                {
                    "id": t.id,
                    "service": next(
                        (k for k, v in self.services.items() if t.service.startswith(v)), ""
                    ),
                    "node": t.node,
                    "state": t.state,
                    "error": t.error,
                    "addresses": list(t.addresses),
                    "models": {
                        m: {str(v): s for v, s in states.items()}
                        for a in t.addresses
                        if a in by_address and serving and t.service.startswith(serving)
                        for m, states in by_address[a].versions.items()
                    },
                }
                for t in self.tasks
                if t.desired == "running"
            ],
            "door": {"url": self.door, "ok": self.door_ok},
            "canary": self.canary,
            "rollout": dict(self.rollout) if self.rollout is not None else None,
            "probe_error": self.probe_error,
        }

    def describe(self) -> list[str]:
        doc = self.to_json()
        lines = [
            f"stack {self.stack} on {self.manager} (endpoint_mode {self.endpoint_mode}): "
            f"{'OK' if self.ok else 'NOT OK'}",
            "nodes: " + ", ".join(f"{n.hostname} ({n.role}, {n.state})" for n in self.nodes),
        ]
        for task in doc["tasks"]:
            models = "; ".join(
                f"{m} " + ",".join(f"v{v} {s}" for v, s in states.items())
                for m, states in task["models"].items()
            )
            lines.append(
                f"  {task['service']:<9} {task['node']:<16} {task['state']:<9} {models}"
                + (f" error: {task['error']}" if task["error"] else "")
            )
        lines.append(f"door {self.door}: {'answers' if self.door_ok else 'DOES NOT ANSWER'}")
        if self.canary is not None:
            where = ", ".join(f"{t['node']} {t['state']}" for t in self.canary["tasks"]) or "none"
            lines.append(
                f"canary {self.canary['service']}: {self.canary['model']} version "
                f"{self.canary['version']} (tasks: {where})"
            )
        for model, info in sorted((self.rollout or {}).items()):
            traffic = info.get("traffic") if isinstance(info, Mapping) else None
            share = f", {traffic['percent']} % of unversioned requests" if traffic else ""
            step = info.get("step") if isinstance(info, Mapping) else None
            lines.append(f"rollout of {model}: {info.get('state', '?')} at {step}{share}")
        if self.probe_error:
            lines.append(f"probe: {self.probe_error}")
        return lines


def swarm_status(spec_path: Path, root: Path) -> SwarmStatus:
    loaded = load(spec_path, root)
    spec = loaded.spec
    manager = Manager(manager_url(spec))
    manager.check()
    stack = stack_name(spec)
    node_list = nodes(manager)
    names = {n.id: n.hostname for n in node_list}
    services = service_ids(manager, stack)
    task_list = tasks(manager, stack, names)
    per_task: list[TaskModels] = []
    error: str | None = "stack not deployed"
    serving = serving_service(manager, stack) if SERVING_SERVICE in services else None
    if serving is not None:
        per_task, error = probe_tasks(manager, serving.image, stack, spec)
    door = f"http://{door_host(manager.url)}:{spec.serving.rest_port}"
    canary = canary_status(manager, stack)
    try:
        rollout = status_summary(root, spec.project)
    except OSError:
        rollout = None
    door_ok = False
    try:
        with RestClient(door, timeout=5) as rest:
            rest.request("GET", f"/v1/models/{spec.models[0].name}")
            door_ok = True
    except (StackError, OSError):  # refused, HTTP error or no answer: the door is not serving
        door_ok = False
    return SwarmStatus(
        stack=stack,
        manager=manager.url,
        endpoint_mode=spec.deploy.swarm.endpoint_mode,
        nodes=node_list,
        tasks=task_list,
        services=services,
        per_task=per_task,
        probe_error=error,
        door=door,
        door_ok=door_ok,
        expected={e.name: e.versions for e in loaded.expectations},
        expected_labels={e.name: dict(e.labels) for e in loaded.expectations if e.labels},
        canary=canary,
        rollout=rollout,
    )


def canary_status(manager: Manager, stack: str) -> dict[str, Any] | None:
    """The weighted canary beside the stack (tfstack.stack.swarm_canary) as ``status`` shows it:
    its service, model, version and running tasks; None when no canary runs."""
    service = canary_service(manager, stack)
    if service is None:
        return None
    name = canary_service_name(stack)
    listing = manager.run(
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}}\t{{.CurrentState}}",
        name,
        check=False,
    )
    return {
        "service": name,
        "model": service.labels.get(LABEL_MODEL, ""),
        "version": service.labels.get(LABEL_CANARY_VERSION, ""),
        "tasks": [
            {"node": node, "state": state.split(" ", 1)[0]}
            for node, _, state in (line.partition("\t") for line in listing.splitlines() if line)
        ],
    }


# --------------------------------------------------------------------------- down


def swarm_down(spec_path: Path, root: Path, *, timeout: float = 90.0) -> list[str]:
    """Remove the stack, its configs, network and (local cluster) each node's models volume."""
    spec = check_spec(spec_path, check_disk=False, project_root=root).raise_for_problems()
    manager = Manager(manager_url(spec))
    manager.check()
    stack = stack_name(spec)
    removed = remove_beside_stack(manager, stack)
    services = service_ids(manager, stack)
    if services:
        manager.run("stack", "rm", stack)
        removed += [f"service {stack}_{name}" for name in sorted(services)]
    deadline = time.monotonic() + timeout
    while True:
        left = manager.run(
            "ps", "--all", "--quiet", "--filter", f"label={STACK_LABEL}={stack}", check=False
        )
        networks = manager.run(
            "network", "ls", "--quiet", "--filter", f"label={STACK_LABEL}={stack}", check=False
        )
        if not left and not networks and not service_ids(manager, stack):
            break
        if time.monotonic() > deadline:
            raise SwarmError(
                f"stack {stack} still has containers or networks after {timeout:.0f} s",
                hint=f"`docker --host {manager.url} stack ps {stack}`; run down again",
            )
        time.sleep(1)
    for name in manager.run(
        "config",
        "ls",
        "--filter",
        f"label={STACK_LABEL}={stack}",
        "--format",
        "{{.Name}}",
        check=False,
    ).split():
        manager.run("config", "rm", name, check=False)
        removed.append(f"config {name}")
    removed += _remove_node_volumes(spec, stack)
    return removed


def beside_stack_labels(stack: str, role: str) -> dict[str, str]:
    """Labels of what tfstack runs beside a stack (a canary service, its config, a probe)."""
    return {LABEL_MANAGED: "true", LABEL_BESIDE_STACK: stack, LABEL_ROLE: role}


def stop_service(manager: Manager, name: str, *, timeout: float = 90.0) -> None:
    """Scale ``name`` to 0 and wait until no task of it runs (each stops with its grace period),
    so its containers have left the stack's network before anything else goes."""
    manager.run("service", "scale", "--detach", f"{name}=0", check=False)
    deadline = time.monotonic() + timeout
    while True:
        states = manager.run(
            "service", "ps", name, "--format", "{{.CurrentState}}", check=False
        ).splitlines()
        active = [s for s in states if s.split(" ", 1)[0] in ACTIVE_TASK_STATES]
        if not active:
            return
        if time.monotonic() > deadline:
            raise SwarmError(
                f"{len(active)} task(s) still running {timeout:.0f} s after scaling to 0",
                service=name,
                hint=f"`docker --host {manager.url} service ps {name}`; run the command again",
            )
        time.sleep(1)


def remove_beside_stack(manager: Manager, stack: str, role: str = "") -> list[str]:
    """Remove the services, containers (on the manager) and configs tfstack made beside
    ``stack`` (``role``: only those), before the stack's network can go."""
    selector = f"label={LABEL_BESIDE_STACK}={stack}"
    filters = ["--filter", selector]
    if role:
        filters += ["--filter", f"label={LABEL_ROLE}={role}"]
    removed: list[str] = []
    for name in manager.run(
        "service", "ls", *filters, "--format", "{{.Name}}", check=False
    ).split():
        stop_service(manager, name)
        manager.run("service", "rm", name, check=False)
        removed.append(f"service {name}")
    for name in manager.run("ps", "--all", *filters, "--format", "{{.Names}}", check=False).split():
        manager.run("rm", "--force", name, check=False)
        removed.append(f"container {name}")
    # A removed service's config stays in use until its tasks are gone.
    deadline = time.monotonic() + 60
    for name in manager.run("config", "ls", *filters, "--format", "{{.Name}}", check=False).split():
        while manager.run("config", "rm", name, check=False) != name:
            if time.monotonic() > deadline:
                raise SwarmError(
                    f"config {name} is still in use 60 s after its service was removed",
                    hint=f"`docker --host {manager.url} service ls`; run the command again",
                )
            time.sleep(1)
        removed.append(f"config {name}")
    return removed


def _remove_node_volumes(spec: StackSpec, stack: str) -> list[str]:
    """Each node's ``<stack>_models`` volume (local cluster: through each node container)."""
    status = cluster_status(CLUSTER_NAME)
    if not status.exists or manager_url(spec) != status.manager_url:
        return []
    removed: list[str] = []
    for node in status.containers:
        if node == "registry":
            continue
        volumes = subprocess.run(
            [
                "docker",
                "exec",
                node,
                "docker",
                "volume",
                "ls",
                "--quiet",
                "--filter",
                f"label={STACK_LABEL}={stack}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for volume in volumes:
            deadline = time.monotonic() + 30
            while True:
                gone = subprocess.run(
                    ["docker", "exec", node, "docker", "volume", "rm", volume],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if gone.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            if gone.returncode != 0:
                raise SwarmError(
                    f"node {node}: volume {volume} not removed: {gone.stderr.strip()}",
                    hint="a task may still be stopping: run down again",
                )
            removed.append(f"volume {volume} on {node}")
    return removed


__all__ = [
    "FRONTEND_SERVICE",
    "MODELS_SERVICE",
    "InspectedService",
    "SwarmError",
    "SwarmStatus",
    "SwarmUpReport",
    "canary_service",
    "canary_status",
    "check_placement",
    "inspect_service",
    "prepare_swarm",
    "serving_service",
    "swarm_down",
    "swarm_plan",
    "swarm_predict",
    "swarm_status",
    "swarm_up",
]
