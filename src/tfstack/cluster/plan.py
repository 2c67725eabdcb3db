"""A local multi-node Docker Swarm, planned: pure data in, ``docker`` argument lists out.

Every node is a container running its own Docker engine (Debian's docker.io), on one user-defined
bridge network with a registry container. ``--privileged`` fails on this kind of kernel
(CAP_SYS_RESOURCE is not grantable), so the node flags grant the rest explicitly; each engine nests
its containers' cgroups under a parent of its own. The first node is the manager: its engine API is
published on 127.0.0.1 only (tfstack and the docker CLI reach the Swarm through it), as are the
ports the front door publishes on it. Everything carries ``org.tfstack.*`` labels, so ``down``
removes exactly what ``up`` made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tfstack.spec.deploy import LOCAL_PUSH_REGISTRY, LOCAL_REGISTRY

MANAGED_LABEL = "org.tfstack.managed"
ROLE_LABEL = "org.tfstack.role"
CLUSTER_LABEL = "org.tfstack.cluster"
# Who made the cluster ("cluster.up" for a user's, "tests" or "bench" for a run's own) and, for a
# run, which process: a run killed half-way leaves its cluster behind, and the next run may remove
# it only when that process is gone (a user's cluster is never removed by a run).
MADE_BY_LABEL = "org.tfstack.cluster.made-by"
MAKER_PROCESS_LABEL = "org.tfstack.cluster.maker-process"
MADE_BY_USER = "cluster.up"
NODE_ROLE = "cluster-node"
REGISTRY_ROLE = "registry"
NETWORK_ROLE = "cluster-network"
VOLUME_ROLE = "cluster-volume"

CLUSTER_NAME = "tfstack"
REGISTRY_HOST, _, _REGISTRY_PORT = LOCAL_REGISTRY.partition(":")
REGISTRY_CONTAINER_PORT = int(_REGISTRY_PORT)
REGISTRY_HOST_PORT = int(LOCAL_PUSH_REGISTRY.rpartition(":")[2])
MANAGER_API_PORT = 23750  # the manager engine's API, published on 127.0.0.1 only
ENGINE_TCP_PORT = 2375
# Overlay subnets of the nested Swarm: away from the usual 10.0.0.0/8 defaults of real networks.
ADDRESS_POOL = "10.231.0.0/16"
MAX_NODES = 7
# How often workers report to the manager. A node is declared down after about three missed
# periods, and only then are its tasks rescheduled: Swarm's 5 s default means 12-17 s before a
# replacement even starts. The local cluster's nodes share one host (no network partitions, a
# loaded machine can still delay a beat by a second), so 2 s: down after ~6 s. See docs/swarm.md.
DISPATCHER_HEARTBEAT = "2s"
# Stopped tasks Swarm keeps per slot (default 5). Their containers pin the images they ran, so a
# node could not drop an old model image for five deploys; one keeps the previous revision's task
# (the one a rollback goes back to) and lets tfstack prune the images older than that.
TASK_HISTORY_LIMIT = 1


def node_flags() -> list[str]:
    """`docker run` options that let a full dockerd run in a container on this kind of kernel."""
    return [
        "--init",  # a PID 1 that reaps the engine's reparented shims
        "--cap-add=ALL",
        "--cap-drop=SYS_RESOURCE",  # not grantable here, which is why --privileged fails
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
        "--cgroupns=host",
        "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    ]


@dataclass(frozen=True)
class ClusterOptions:
    """What ``cluster up`` is asked for."""

    nodes: int = 3
    name: str = CLUSTER_NAME
    published_ports: tuple[int, ...] = ()  # the door's ports, published from the manager node
    node_image: str = ""
    registry_image: str = ""
    made_by: str = MADE_BY_USER
    maker_process: str = ""  # "<boot id>:<pid>" of a test or bench run; empty for a user's


@dataclass(frozen=True)
class NodePlan:
    """One node container: its name, role in the Swarm and the full ``docker run`` argv."""

    name: str
    manager: bool
    run: list[str]
    volume: str
    cgroup_parent: str


@dataclass(frozen=True)
class ClusterPlan:
    """Everything ``cluster up`` creates, in order."""

    name: str
    network: str
    labels: dict[str, str]
    network_create: list[str]
    registry_volume: str
    registry_run: list[str]
    nodes: list[NodePlan] = field(default_factory=list)

    @property
    def manager(self) -> NodePlan:
        return self.nodes[0]

    @property
    def manager_url(self) -> str:
        return f"tcp://127.0.0.1:{MANAGER_API_PORT}"

    def describe(self) -> list[str]:
        lines = [f"network {self.network} (bridge)", f"registry {REGISTRY_HOST} ({LOCAL_REGISTRY})"]
        for node in self.nodes:
            role = "manager" if node.manager else "worker"
            lines.append(f"node {node.name} ({role}, engine volume {node.volume})")
        return lines


def labels_for(cluster: str, role: str) -> dict[str, str]:
    return {MANAGED_LABEL: "true", CLUSTER_LABEL: cluster, ROLE_LABEL: role}


def _label_flags(labels: dict[str, str]) -> list[str]:
    return [f"--label={key}={value}" for key, value in labels.items()]


def node_name(cluster: str, index: int) -> str:
    return f"{cluster}-node-{index}"


def dockerd_argv(cgroup_parent: str, *, manager: bool) -> list[str]:
    """The nested engine's command line (its own cgroup parent, the registry over plain HTTP)."""
    argv = [
        "dockerd",
        "--host=unix:///var/run/docker.sock",
        f"--cgroup-parent={cgroup_parent}",
        f"--insecure-registry={LOCAL_REGISTRY}",
        "--storage-driver=overlay2",
    ]
    if manager:
        # Reached only through the port published on the host's 127.0.0.1 (see plan_cluster).
        argv.append(f"--host=tcp://0.0.0.0:{ENGINE_TCP_PORT}")
    return argv


def plan_cluster(options: ClusterOptions) -> ClusterPlan:
    """The network, registry and node containers of a local cluster (pure)."""
    if not 1 <= options.nodes <= MAX_NODES:
        raise ValueError(f"nodes must be 1..{MAX_NODES}, got {options.nodes}")
    name = options.name
    network = f"{name}-cluster"
    registry_volume = f"{name}-registry-data"
    network_labels = labels_for(name, NETWORK_ROLE)
    maker = {MADE_BY_LABEL: options.made_by}
    if options.maker_process:
        maker[MAKER_PROCESS_LABEL] = options.maker_process
    registry_labels = {**labels_for(name, REGISTRY_ROLE), **maker}
    registry_run = [
        "docker",
        "run",
        "--detach",
        f"--name={REGISTRY_HOST}",
        f"--network={network}",
        f"--network-alias={REGISTRY_HOST}",
        f"--publish=127.0.0.1:{REGISTRY_HOST_PORT}:{REGISTRY_CONTAINER_PORT}",
        f"--volume={registry_volume}:/var/lib/docker-registry",
        "--restart=unless-stopped",
        *_label_flags(registry_labels),
        options.registry_image,
    ]
    nodes: list[NodePlan] = []
    for index in range(1, options.nodes + 1):
        node = node_name(name, index)
        manager = index == 1
        volume = f"{node}-docker"
        cgroup_parent = f"/{node}"
        ports: list[str] = []
        if manager:
            ports.append(f"--publish=127.0.0.1:{MANAGER_API_PORT}:{ENGINE_TCP_PORT}")
            ports += [f"--publish=127.0.0.1:{port}:{port}" for port in options.published_ports]
        labels = {**labels_for(name, NODE_ROLE), **maker}
        run = [
            "docker",
            "run",
            "--detach",
            f"--name={node}",
            f"--hostname={node}",
            f"--network={network}",
            f"--volume={volume}:/var/lib/docker",
            *node_flags(),
            *ports,
            *_label_flags(labels),
            f"--label={CLUSTER_LABEL}.swarm-role={'manager' if manager else 'worker'}",
            options.node_image,
            *dockerd_argv(cgroup_parent, manager=manager),
        ]
        nodes.append(NodePlan(node, manager, run, volume, cgroup_parent))
    network_create = [
        "docker",
        "network",
        "create",
        "--driver=bridge",
        *_label_flags(network_labels),
        network,
    ]
    return ClusterPlan(
        name=name,
        network=network,
        labels=labels_for(name, NODE_ROLE),
        network_create=network_create,
        registry_volume=registry_volume,
        registry_run=registry_run,
        nodes=nodes,
    )


def swarm_init_argv(manager: NodePlan) -> list[str]:
    """``docker swarm init`` run in the manager node (advertising its bridge address)."""
    return [
        "docker",
        "exec",
        manager.name,
        "docker",
        "swarm",
        "init",
        "--advertise-addr=eth0",
        f"--default-addr-pool={ADDRESS_POOL}",
        f"--dispatcher-heartbeat={DISPATCHER_HEARTBEAT}",
        f"--task-history-limit={TASK_HISTORY_LIMIT}",
    ]


def swarm_join_argv(worker: NodePlan, manager: NodePlan, token: str) -> list[str]:
    """``docker swarm join`` run in a worker node."""
    return [
        "docker",
        "exec",
        worker.name,
        "docker",
        "swarm",
        "join",
        "--advertise-addr=eth0",
        f"--token={token}",
        f"{manager.name}:2377",
    ]
