"""Semantic checks of ``monitoring.prometheus``: something to scrape, a free host port.

Run by :class:`tfstack.spec.rules.Checker` once the schema is valid.
"""

from __future__ import annotations

from tfstack.spec.frontend import frontend_enabled
from tfstack.spec.frontend_rules import AddProblem
from tfstack.spec.model import StackSpecFields


def check_prometheus(spec: StackSpecFields, add: AddProblem) -> None:
    """Prometheus needs the servers' metrics and a host port no other service publishes."""
    monitoring = spec.monitoring
    if not monitoring.prometheus:
        return
    if not monitoring.enabled:
        add(
            ("monitoring", "prometheus"),
            "Prometheus would have nothing to scrape: monitoring.enabled is false",
            "set monitoring.enabled: true (the servers then serve metrics at monitoring.path)",
        )
    serving = spec.serving
    door = frontend_enabled(spec.frontend, serving.replicas)
    published = 1 if door else serving.replicas
    taken = {
        "serving.grpc_port": range(serving.grpc_port, serving.grpc_port + published),
        "serving.rest_port": range(serving.rest_port, serving.rest_port + published),
    }
    for key, ports in taken.items():
        if monitoring.prometheus_port in ports:
            add(
                ("monitoring", "prometheus_port"),
                f"port {monitoring.prometheus_port} is already published for {key} "
                f"({ports.start}-{ports.stop - 1})",
                "choose another prometheus_port, e.g. 9090",
            )
