"""The stack's Prometheus (``monitoring.prometheus: true``): its config, its compose service and
``promtool check config`` on the rendered config before anything starts.

Targets are found the way the door finds replicas: by Docker's DNS on the project network. The
``serving`` service name resolves to every replica's address (``dns_sd_configs`` type A), so
scaling ``serving.replicas`` needs no new config; the door's HAProxy Prometheus exporter
(``/metrics`` on its stats port) is a static target when the stack has a door.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.core.labels import LABEL_SPEC_DIGEST
from tfstack.render.frontdoor import FRONTEND_SERVICE, SERVING_SERVICE, door_is_on
from tfstack.render.imagecheck import ConfigCheck, check_config_in_image, check_run_command
from tfstack.spec import StackSpec

PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_CONFIG = "config/prometheus/prometheus.yml"
PROMETHEUS_VOLUME = "prometheus-data"
CONTAINER_PROMETHEUS_DIR = "/etc/tfstack-prometheus"
CONTAINER_PROMETHEUS_DATA = "/prometheus"
CONTAINER_PROMETHEUS_PORT = 9090
PROMETHEUS_USER = "prometheus"  # Debian's package's system user (the image's USER)
DOOR_METRICS_PATH = "/metrics"  # the door's `use-service prometheus-exporter` on its stats port
MAX_SCRAPE_TIMEOUT_S = 10
PROMTOOL_TIMEOUT_S = 60


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: by DNS (every address of a service) or one static target."""

    name: str
    metrics_path: str
    dns_name: str = ""
    port: int = 0
    target: str = ""


def prometheus_on(spec: StackSpec) -> bool:
    return spec.monitoring.enabled and spec.monitoring.prometheus


def scrape_jobs(spec: StackSpec) -> list[ScrapeJob]:
    """Every replica by DNS; the door's exporter when the stack has a door."""
    jobs = [
        ScrapeJob(
            SERVING_SERVICE,
            spec.monitoring.path,
            dns_name=SERVING_SERVICE,
            port=spec.serving.rest_port,
        )
    ]
    if door_is_on(spec):
        target = f"{FRONTEND_SERVICE}:{spec.frontend.stats_port}"
        jobs.append(ScrapeJob(FRONTEND_SERVICE, DOOR_METRICS_PATH, target=target))
    return jobs


def prometheus_values(spec: StackSpec) -> dict[str, Any]:
    """The values of ``prometheus/prometheus.yml.j2``."""
    interval = spec.monitoring.scrape_interval_seconds
    return {
        "project": spec.project,
        "scrape_interval": f"{interval}s",
        "scrape_timeout": f"{min(interval, MAX_SCRAPE_TIMEOUT_S)}s",
        "jobs": scrape_jobs(spec),
    }


def prometheus_entrypoint(spec: StackSpec) -> list[str]:
    """The whole command line (the compose entrypoint; also right for upstream's image)."""
    return [
        "prometheus",
        f"--config.file={CONTAINER_PROMETHEUS_DIR}/prometheus.yml",
        f"--storage.tsdb.path={CONTAINER_PROMETHEUS_DATA}",
        f"--storage.tsdb.retention.time={spec.monitoring.retention_hours}h",
        f"--web.listen-address=:{CONTAINER_PROMETHEUS_PORT}",
    ]


def prometheus_service_values(
    spec: StackSpec, root: Path, config_text: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The values of the compose ``prometheus`` service (``service-prometheus.yml.j2``)."""
    config_dir = root.resolve() / Path(PROMETHEUS_CONFIG).parent
    source = Path(os.path.relpath(config_dir, root.resolve() / "compose")).as_posix()
    digest = hashlib.sha256(
        "\0".join([config_text, *prometheus_entrypoint(spec)]).encode()
    ).hexdigest()
    return {
        "image": spec.monitoring.prometheus_image,
        "user": PROMETHEUS_USER,
        "entrypoint": prometheus_entrypoint(spec),
        "port": {
            "target": CONTAINER_PROMETHEUS_PORT,
            "host_ip": spec.serving.bind_address,
            "published": str(spec.monitoring.prometheus_port),
        },
        "config_source": source,
        "config_target": CONTAINER_PROMETHEUS_DIR,
        "data_volume": PROMETHEUS_VOLUME,
        "data_target": CONTAINER_PROMETHEUS_DATA,
        "depends_on": [SERVING_SERVICE],
        # Prometheus reads its config at start: a changed config recreates the container.
        "labels": {**labels, LABEL_SPEC_DIGEST: digest},
        "stop_grace_period": "15s",
        "restart": "unless-stopped",
    }


def promtool_command(docker: str, image: str, config_dir: Path) -> list[str]:
    """``docker run`` of ``promtool check config`` on a rendered config, without network."""
    return [
        *check_run_command(docker, config_dir, CONTAINER_PROMETHEUS_DIR),
        "--entrypoint",
        "promtool",
        image,
        "check",
        "config",
        f"{CONTAINER_PROMETHEUS_DIR}/prometheus.yml",
    ]


PROMTOOL_CHECK = ConfigCheck(
    config=PROMETHEUS_CONFIG,
    filename="prometheus.yml",
    tool="promtool check config",
    what="the Prometheus config",
    missing_hint="`./tfstack up` builds tfstack/prometheus from Debian's package when missing",
    refusal="promtool refuses the rendered Prometheus config",
    refusal_hint="check the monitoring section of the spec; if the spec is right this is a bug "
    "in tfstack's template",
    tmp_prefix="tfstack-promtool-",
    timeout_s=PROMTOOL_TIMEOUT_S,
)


def check_prometheus_config(
    files: Mapping[str, str], spec: StackSpec, *, required: bool | None = None
) -> bool:
    """``promtool check config`` on the rendered config; False when it could not run.

    ``required``: True raises when the check cannot run (no image, no docker CLI); None runs it
    when the image is present. Raises RenderError with promtool's words when the config is refused.
    """
    image = spec.monitoring.prometheus_image
    return check_config_in_image(
        PROMTOOL_CHECK,
        files,
        image,
        lambda docker, config_dir: promtool_command(docker, image, config_dir),
        required=required,
    )
