"""``cluster up | status | down``: the one side-effect layer of the local Swarm (see plan.py).

Runs the ``docker`` CLI (``systempaths=unconfined`` is a CLI-only option). ``up`` is idempotent (a
running cluster of the asked size is reported, not rebuilt) and leaves nothing behind when it fails;
``down`` removes every container, volume and network with the cluster's label, then the nodes'
empty cgroups, and is idempotent too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tfstack.build.clusterimages import (
    NODE_IMAGE,
    REGISTRY_BINARY,
    REGISTRY_CONFIG,
    REGISTRY_IMAGE,
    build_recipe,
)
from tfstack.cluster.plan import (
    CLUSTER_LABEL,
    CLUSTER_NAME,
    MADE_BY_LABEL,
    MADE_BY_USER,
    MAKER_PROCESS_LABEL,
    MANAGER_API_PORT,
    NODE_ROLE,
    REGISTRY_HOST_PORT,
    REGISTRY_ROLE,
    ROLE_LABEL,
    ClusterOptions,
    ClusterPlan,
    NodePlan,
    labels_for,
    plan_cluster,
    swarm_init_argv,
    swarm_join_argv,
)
from tfstack.errors import TfstackError

Say = Callable[[str], None]
ENGINE_START_S = 90
NODES_READY_S = 60
CGROUP_ROOT = Path("/sys/fs/cgroup")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
COMMAND_TIMEOUT_S = 120


class ClusterError(TfstackError):
    """The local cluster could not be made, read or removed; says which node and what to do."""

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"node {node}: {message}" if node else message, hint=hint)
        self.node = node


def _quiet(_: str) -> None:
    return None


def run(argv: Sequence[str], *, node: str | None = None, check: bool = True) -> str:
    """Run a docker command; its stdout. ClusterError with stderr's tail when it fails."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`{' '.join(argv[:4])} ...` took over {COMMAND_TIMEOUT_S} s") from exc
    if check and result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise ClusterError(f"`{' '.join(argv[:5])} ...` failed: {tail}", node=node)
    return result.stdout.strip()


def _selector(name: str, role: str | None = None) -> list[str]:
    filters = ["--filter", f"label={CLUSTER_LABEL}={name}"]
    if role is not None:
        filters += ["--filter", f"label={ROLE_LABEL}={role}"]
    return filters


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class SwarmNode:
    """One Swarm node as the manager sees it."""

    hostname: str
    role: str
    state: str
    availability: str
    address: str


@dataclass
class ClusterStatus:
    """What exists of a local cluster: containers, the Swarm's nodes, the registry."""

    name: str
    containers: dict[str, str] = field(default_factory=dict)  # container name -> state
    swarm_nodes: list[SwarmNode] = field(default_factory=list)
    registry: str = ""  # "running" / "" when absent
    problems: list[str] = field(default_factory=list)
    made_by: str = ""  # MADE_BY_USER, "tests", "bench"; "" for a cluster older than the label
    maker_process: str = ""  # "<boot id>:<pid>" of the run that made it

    @property
    def exists(self) -> bool:
        return bool(self.containers)

    @property
    def ready(self) -> bool:
        nodes = [n for n in self.containers if n != "registry"]
        return (
            bool(nodes)
            and self.registry == "running"
            and len(self.swarm_nodes) == len(nodes)
            and all(n.state == "ready" for n in self.swarm_nodes)
        )

    @property
    def manager_url(self) -> str:
        return f"tcp://127.0.0.1:{MANAGER_API_PORT}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ready": self.ready,
            "manager": self.manager_url if self.exists else None,
            "registry": {"state": self.registry, "push": f"127.0.0.1:{REGISTRY_HOST_PORT}"},
            "made_by": self.made_by or None,
            "containers": self.containers,
            "nodes": [n.__dict__ for n in self.swarm_nodes],
            "problems": self.problems,
        }

    def describe(self) -> list[str]:
        if not self.exists:
            return [f"cluster {self.name}: not running (`./tfstack cluster.up --nodes 3`)"]
        lines = [
            f"cluster {self.name}: {'ready' if self.ready else 'NOT READY'}, manager "
            f"{self.manager_url}, registry {self.registry or 'absent'} "
            f"(push 127.0.0.1:{REGISTRY_HOST_PORT}), made by {self.made_by or 'an older tfstack'}"
        ]
        for node in self.swarm_nodes:
            lines.append(
                f"  {node.hostname:<20} {node.role:<8} {node.state:<8} {node.availability:<7}"
                f" {node.address}"
            )
        lines += [f"  problem: {p}" for p in self.problems]
        return lines


def parse_node_inspect(text: str) -> list[SwarmNode]:
    """``docker node inspect`` JSON -> nodes (pure)."""
    nodes = []
    for item in json.loads(text or "[]"):
        spec, status = item.get("Spec", {}), item.get("Status", {})
        nodes.append(
            SwarmNode(
                hostname=item.get("Description", {}).get("Hostname", "?"),
                role=spec.get("Role", "?"),
                state=status.get("State", "?"),
                availability=spec.get("Availability", "?"),
                address=status.get("Addr", ""),
            )
        )
    return sorted(nodes, key=lambda n: n.hostname)


def cluster_status(name: str = CLUSTER_NAME) -> ClusterStatus:
    """The cluster's containers, the manager's view of the nodes, the registry."""
    status = ClusterStatus(name)
    listing = run(["docker", "ps", "--all", *_selector(name), "--format", "{{.Names}}\t{{.State}}"])
    for line in _lines(listing):
        container, _, state = line.partition("\t")
        labels = run(
            ["docker", "inspect", "--format", "{{json .Config.Labels}}", container], check=False
        )
        role = ""
        with contextlib.suppress(ValueError):
            found = json.loads(labels or "{}") or {}
            role = found.get(ROLE_LABEL, "")
            status.made_by = status.made_by or found.get(MADE_BY_LABEL, "")
            status.maker_process = status.maker_process or found.get(MAKER_PROCESS_LABEL, "")
        if role == "registry":
            status.registry = state
            status.containers["registry"] = state
        else:
            status.containers[container] = state
    manager = f"{name}-node-1"
    if status.containers.get(manager) == "running":
        ids = run(["docker", "exec", manager, "docker", "node", "ls", "-q"], check=False)
        if ids:
            text = run(
                ["docker", "exec", manager, "docker", "node", "inspect", *ids.split()], check=False
            )
            status.swarm_nodes = parse_node_inspect(text)
        else:
            status.problems.append(f"{manager}: no Swarm on the manager")
    for container, state in status.containers.items():
        if state != "running":
            status.problems.append(f"{container} is {state}")
    return status


# --------------------------------------------------------------------------- up


def _wait_engine(node: NodePlan) -> None:
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["docker", "exec", node.name, "docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0:
            return
        time.sleep(1)
    logs = run(["docker", "logs", "--tail", "15", node.name], check=False)
    raise ClusterError(
        f"its Docker engine did not answer within {ENGINE_START_S} s:\n{logs}",
        node=node.name,
        hint="see `docker logs " + node.name + "`; the node needs cgroup v1/v2 access and overlay2",
    )


def _wait_nodes_ready(plan: ClusterPlan) -> None:
    deadline = time.monotonic() + NODES_READY_S
    while True:
        ids = run(["docker", "exec", plan.manager.name, "docker", "node", "ls", "-q"])
        nodes = parse_node_inspect(
            run(["docker", "exec", plan.manager.name, "docker", "node", "inspect", *ids.split()])
        )
        if len(nodes) == len(plan.nodes) and all(n.state == "ready" for n in nodes):
            return
        if time.monotonic() > deadline:
            late = [n.hostname for n in nodes if n.state != "ready"]
            raise ClusterError(f"Swarm nodes not ready after {NODES_READY_S} s: {late}")
        time.sleep(1)


def apply_cluster(plan: ClusterPlan, *, say: Say = _quiet) -> None:
    """Create the network, registry and nodes, then the Swarm; on failure remove all of it."""
    try:
        run(plan.network_create)
        for volume, role in [(plan.registry_volume, "registry")] + [
            (node.volume, node.name) for node in plan.nodes
        ]:
            labels = labels_for(plan.name, "cluster-volume")
            run(
                [
                    "docker",
                    "volume",
                    "create",
                    *[f"--label={k}={v}" for k, v in labels.items()],
                    f"--label=org.tfstack.cluster.for={role}",
                    volume,
                ]
            )
        say("starting the registry")
        run(plan.registry_run, node="registry")
        for node in plan.nodes:
            say(f"starting {node.name}")
            run(node.run, node=node.name)
        for node in plan.nodes:
            _wait_engine(node)
        say("forming the Swarm")
        run(swarm_init_argv(plan.manager), node=plan.manager.name)
        token = run(
            ["docker", "exec", plan.manager.name, "docker", "swarm", "join-token", "-q", "worker"]
        )
        for worker in plan.nodes[1:]:
            run(swarm_join_argv(worker, plan.manager, token), node=worker.name)
        _wait_nodes_ready(plan)
    except BaseException:
        say("cluster up failed: removing what it made")
        cluster_down(plan.name)
        raise


def this_process() -> str:
    """``<boot id>:<pid>`` of this process: names a run's process across reboots."""
    try:
        boot = BOOT_ID.read_text(encoding="utf-8").strip()
    except OSError:
        boot = ""
    return f"{boot}:{os.getpid()}"


def process_alive(maker: str) -> bool:
    """Whether the process a ``this_process()`` value names still runs on this boot of the host."""
    boot, _, pid = maker.rpartition(":")
    current_boot, _, _ = this_process().rpartition(":")
    return pid.isdigit() and boot == current_boot and Path(f"/proc/{pid}").exists()


def remove_leftover_cluster(name: str = CLUSTER_NAME, *, say: Say = _quiet) -> bool:
    """Before a test or bench run makes its cluster: remove one that a killed run left behind.

    True when one was removed. A cluster a user made (``cluster up``), one older than the maker
    labels, or one whose run is still alive is never touched: a ClusterError says whose it is."""
    existing = cluster_status(name)
    if not existing.exists:
        return False
    run_made = existing.made_by not in ("", MADE_BY_USER)
    if run_made and not process_alive(existing.maker_process):
        say(
            f"removing cluster {name}: a {existing.made_by} run made it and is gone "
            f"(process {existing.maker_process or '?'}), so it was killed before its cleanup"
        )
        cluster_down(name)
        return True
    if run_made:
        whose = f"a {existing.made_by} run that is still running (process {existing.maker_process})"
        hint = "wait for that run to finish; only one local cluster can exist (its ports are fixed)"
    else:
        maker = existing.made_by or "an older tfstack"
        whose = f"{maker} (a user's cluster: a run never removes it)"
        hint = "`./tfstack cluster.down` first, if nobody is using it"
    raise ClusterError(f"cluster {name} already exists, made by {whose}", hint=hint)


def cluster_up(
    nodes: int = 3,
    *,
    published_ports: Sequence[int] = (),
    name: str = CLUSTER_NAME,
    made_by: str = MADE_BY_USER,
    say: Say = _quiet,
) -> ClusterStatus:
    """A ready local cluster of ``nodes`` nodes (made if absent; an existing one is reused).

    ``made_by`` other than a user's ("tests", "bench") labels the cluster with this process, so a
    later run can tell a leftover of a killed run (see ``remove_leftover_cluster``)."""
    existing = cluster_status(name)
    if existing.exists:
        count = len(existing.containers) - (1 if "registry" in existing.containers else 0)
        if existing.ready and count == nodes:
            say(f"cluster {name} is already up with {nodes} nodes")
            return existing
        raise ClusterError(
            f"cluster {name} exists with {count} node(s), "
            f"{'ready' if existing.ready else 'not ready'}; asked for {nodes}",
            hint="`./tfstack cluster.down` first, then `./tfstack cluster.up --nodes N`",
        )
    node_image = build_recipe(NODE_IMAGE, say=say)
    registry_image = build_recipe(REGISTRY_IMAGE, say=say)
    options = ClusterOptions(
        nodes=nodes,
        name=name,
        published_ports=tuple(published_ports),
        node_image=node_image,
        registry_image=registry_image,
        made_by=made_by,
        maker_process="" if made_by == MADE_BY_USER else this_process(),
    )
    try:
        plan = plan_cluster(options)
    except ValueError as exc:
        raise ClusterError(str(exc), hint="use --nodes between 1 and 7") from exc
    apply_cluster(plan, say=say)
    return cluster_status(name)


# --------------------------------------------------------------------------- housekeeping


def collect_registry_garbage(name: str = CLUSTER_NAME) -> int:
    """Free the blobs no manifest names any more (``registry garbage-collect``); how many.

    Distribution collects garbage offline by design: a blob uploaded while it runs, and not yet
    named by a manifest, would be deleted. tfstack runs it right after its own deploy, the only
    writer of the local cluster's registry, whose config has no blob descriptor cache (a cache
    would keep answering "exists" for a deleted blob)."""
    container = _lines(
        run(["docker", "ps", "--quiet", *_selector(name, REGISTRY_ROLE)], check=False)
    )
    if not container:
        raise ClusterError(f"cluster {name}: no running registry to collect garbage in")
    output = run(
        ["docker", "exec", container[0], REGISTRY_BINARY, "garbage-collect", REGISTRY_CONFIG],
        node="registry",
    )
    return sum("blob eligible for deletion" in line for line in _lines(output))


def node_containers(name: str = CLUSTER_NAME) -> list[str]:
    """The running node containers of the local cluster."""
    return _lines(
        run(["docker", "ps", *_selector(name, NODE_ROLE), "--format", "{{.Names}}"], check=False)
    )


# --------------------------------------------------------------------------- down


def remove_cgroups(parents: Sequence[str]) -> list[str]:
    """Remove the (empty) cgroups a nested engine made under each ``--cgroup-parent``."""
    problems: list[str] = []
    if not CGROUP_ROOT.is_dir():
        return problems
    for parent in parents:
        for hierarchy in [CGROUP_ROOT, *[p for p in CGROUP_ROOT.iterdir() if p.is_dir()]]:
            top = hierarchy / parent.lstrip("/")
            if not top.is_dir():
                continue
            for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            try:
                top.rmdir()
            except OSError as exc:
                problems.append(f"cgroup {top}: {exc}")
    return problems


def cluster_down(name: str = CLUSTER_NAME) -> list[str]:
    """Remove every container, volume and network labelled for cluster ``name``; what went."""
    removed: list[str] = []
    containers = _lines(run(["docker", "ps", "--all", "--quiet", *_selector(name)], check=False))
    names = _lines(
        run(["docker", "ps", "--all", *_selector(name), "--format", "{{.Names}}"], check=False)
    )
    if containers:
        run(["docker", "rm", "--force", "--volumes", *containers])
        removed += [f"container {n}" for n in names]
    for volume in _lines(run(["docker", "volume", "ls", "--quiet", *_selector(name)], check=False)):
        run(["docker", "volume", "rm", "--force", volume])
        removed.append(f"volume {volume}")
    for network in _lines(
        run(
            ["docker", "network", "ls", "--quiet", "--format", "{{.Name}}", *_selector(name)],
            check=False,
        )
    ):
        run(["docker", "network", "rm", network])
        removed.append(f"network {network}")
    parents = [f"/{n}" for n in names if n.startswith(f"{name}-node-")]
    problems = remove_cgroups(parents)
    if problems:
        raise ClusterError(
            "removed the containers but not every cgroup: " + "; ".join(problems),
            hint="a process of a nested engine may still be exiting: run `cluster down` again",
        )
    return removed


__all__ = [
    "NODE_ROLE",
    "ClusterError",
    "ClusterStatus",
    "cluster_down",
    "cluster_status",
    "cluster_up",
    "collect_registry_garbage",
    "node_containers",
    "process_alive",
    "remove_leftover_cluster",
    "this_process",
]
