"""A local multi-node Docker Swarm (engines in containers) plus a registry, for development and CI.

``cluster_up`` / ``cluster_status`` / ``cluster_down``; :mod:`tfstack.cluster.plan` plans.
Against a real Swarm, ``DOCKER_HOST`` or ``deploy.swarm.manager`` points at a manager instead.
"""

from tfstack.cluster.apply import (
    ClusterError,
    ClusterStatus,
    cluster_down,
    cluster_status,
    cluster_up,
    remove_leftover_cluster,
)

__all__ = [
    "ClusterError",
    "ClusterStatus",
    "cluster_down",
    "cluster_status",
    "cluster_up",
    "remove_leftover_cluster",
]
