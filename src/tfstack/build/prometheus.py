"""The stack's Prometheus image ``tfstack/prometheus``: Debian's package on tfstack's Debian base.

Built like the front door's image (a plan as data, performed by
:func:`tfstack.build.images.build_image`) with no registry: the base is ``tfstack/debian:<suite>``
and Prometheus comes from the Debian mirror the base's apt sources name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import docker.errors
from rich.console import Console

from tfstack.build.baseimage import apply_base_image, plan_base_image
from tfstack.build.images import (
    BuiltImage,
    ContextEntry,
    ImageBuildPlan,
    build_image,
    source_info,
)
from tfstack.core.labels import LABEL_MANAGED, LABEL_STAGE
from tfstack.core.progress import Say
from tfstack.errors import BuildError
from tfstack.spec.model import PROMETHEUS_IMAGE

PROMETHEUS_REPOSITORY = PROMETHEUS_IMAGE.split(":", 1)[0]
PROMETHEUS_DOCKER_DIR = Path("dockerfiles/prometheus")
PROMETHEUS_TARGET = "prometheus"
PROMETHEUS_VERSION = "2.42"  # Debian bookworm's prometheus package


def plan_prometheus_image(
    *, root: Path, base_image: str, revision: str, created: str, no_cache: bool = False
) -> ImageBuildPlan:
    """The build of ``tfstack/prometheus:<version>`` and ``:latest`` (pure)."""
    labels = {
        "org.opencontainers.image.title": "tfstack-prometheus",
        "org.opencontainers.image.description": "tfstack's Prometheus: Debian's package, "
        "non-root, read-only root file system, data on a volume",
        "org.opencontainers.image.version": PROMETHEUS_VERSION,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": base_image,
        LABEL_MANAGED: "true",
        LABEL_STAGE: PROMETHEUS_TARGET,
    }
    return ImageBuildPlan(
        tags=(f"{PROMETHEUS_REPOSITORY}:{PROMETHEUS_VERSION}", f"{PROMETHEUS_REPOSITORY}:latest"),
        target=PROMETHEUS_TARGET,
        build_args={"BASE_IMAGE": base_image},
        labels=labels,
        context=(ContextEntry(root / PROMETHEUS_DOCKER_DIR / "Dockerfile", "Dockerfile"),),
        no_cache=no_cache,
        network_mode=None,  # apt-get install prometheus reaches the Debian mirror
    )


def build_prometheus_image(
    client: docker.DockerClient,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
    no_cache: bool = False,
) -> BuiltImage:
    """Base image (when missing) -> ``tfstack/prometheus`` build."""
    base = plan_base_image(client)
    apply_base_image(base, say=say)
    base = plan_base_image(client, try_pull=False)
    source = source_info(root, paths=(str(PROMETHEUS_DOCKER_DIR),))
    plan = plan_prometheus_image(
        root=root,
        base_image=base.image,
        revision=source.revision,
        created=source.created,
        no_cache=no_cache,
    )
    say(f"building {', '.join(plan.tags)} on {plan.build_args['BASE_IMAGE']}")
    return build_image(
        client, plan, console=console or Console(stderr=True), scratch=root / ".cache"
    )


def ensure_prometheus_image(client: Any, image: str, *, source_root: Path, say: Say) -> str:
    """The image id of the stack's Prometheus: present, else built (tfstack/prometheus), else
    pulled."""
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        pass
    if image.split(":", 1)[0] == PROMETHEUS_REPOSITORY:
        say(f"image {image} is missing: building it (Prometheus from Debian, a minute or two)")
        build_prometheus_image(client, root=source_root, say=say)
        return str(client.images.get(image).id)
    try:
        client.images.pull(image)
        return str(client.images.get(image).id)
    except docker.errors.DockerException as exc:
        raise BuildError(
            f"image {image} is not on the engine and cannot be pulled: {exc}",
            image=image,
            hint=f"use {PROMETHEUS_IMAGE} (built locally from Debian's package) in "
            "monitoring.prometheus_image",
        ) from exc
