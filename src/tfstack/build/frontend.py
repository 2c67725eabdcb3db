"""The front door image ``tfstack/frontend``: Debian's HAProxy on tfstack's own Debian base.

Built like the runtime image (a plan as data, performed by :func:`tfstack.build.images.build_image`)
with no registry: the base is ``tfstack/debian:<suite>`` (debootstrapped by
:mod:`tfstack.build.baseimage` when it cannot be pulled) and HAProxy comes from the Debian mirror
the base's apt sources name, so this build needs the network the runtime build does without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    RuntimeImagePlans,
    apply_runtime_build,
    build_image,
    plan_runtime_build,
    source_info,
)
from tfstack.core.labels import LABEL_MANAGED, LABEL_STAGE
from tfstack.errors import BuildError
from tfstack.spec import FRONTEND_IMAGE

Say = Callable[[str], None]

FRONTEND_REPOSITORY = FRONTEND_IMAGE.split(":", 1)[0]
FRONTEND_DOCKER_DIR = Path("dockerfiles/frontend")
FRONTEND_TARGET = "frontend"
FRONTEND_VERSION = "2.6"  # Debian bookworm's HAProxy branch


def plan_frontend_image(
    *, root: Path, base_image: str, revision: str, created: str, no_cache: bool = False
) -> ImageBuildPlan:
    """The build of ``tfstack/frontend:<version>`` and ``:latest`` (pure)."""
    labels = {
        "org.opencontainers.image.title": "tfstack-frontend",
        "org.opencontainers.image.description": "tfstack's front door: HAProxy from Debian, "
        "non-root, read-only root file system",
        "org.opencontainers.image.version": FRONTEND_VERSION,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "GPL-2.0-or-later",
        "org.opencontainers.image.base.name": base_image,
        LABEL_MANAGED: "true",
        LABEL_STAGE: FRONTEND_TARGET,
    }
    return ImageBuildPlan(
        tags=(f"{FRONTEND_REPOSITORY}:{FRONTEND_VERSION}", f"{FRONTEND_REPOSITORY}:latest"),
        target=FRONTEND_TARGET,
        build_args={"BASE_IMAGE": base_image},
        labels=labels,
        context=(ContextEntry(root / FRONTEND_DOCKER_DIR / "Dockerfile", "Dockerfile"),),
        no_cache=no_cache,
        network_mode=None,  # apt-get install haproxy reaches the Debian mirror
    )


def plan_frontend_build(
    client: docker.DockerClient, *, root: Path, no_cache: bool = False, try_pull: bool = True
) -> ImageBuildPlan:
    """What ``invoke images`` does for the door (the base image is shared with the runtime)."""
    base = plan_base_image(client, try_pull=try_pull)
    source = source_info(root, paths=(str(FRONTEND_DOCKER_DIR),))
    return plan_frontend_image(
        root=root,
        base_image=base.image,
        revision=source.revision,
        created=source.created,
        no_cache=no_cache,
    )


@dataclass(frozen=True)
class ImagesPlan:
    """What ``invoke images`` builds: the runtime image (base, wheelhouse, offline build) and the
    door's image on the same base."""

    runtime: RuntimeImagePlans
    frontend: ImageBuildPlan

    def describe(self) -> list[str]:
        return [*self.runtime.describe(), *self.frontend.describe()]


def plan_images(
    client: docker.DockerClient, *, root: Path, no_cache: bool = False, try_pull: bool = True
) -> ImagesPlan:
    """The runtime plans, then ``tfstack/frontend`` on the runtime's base image (pure but for the
    engine's answers about the base image and its architecture)."""
    runtime = plan_runtime_build(client, root=root, no_cache=no_cache, try_pull=try_pull)
    source = source_info(root, paths=(str(FRONTEND_DOCKER_DIR),))
    frontend = plan_frontend_image(
        root=root,
        base_image=runtime.base.image,
        revision=source.revision,
        created=source.created,
        no_cache=no_cache,
    )
    return ImagesPlan(runtime, frontend)


def apply_images(
    client: docker.DockerClient,
    plans: ImagesPlan,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
) -> list[BuiltImage]:
    """Runtime image (base image, wheelhouse, build), then the door's image on that base."""
    console = console or Console(stderr=True)
    runtime = apply_runtime_build(client, plans.runtime, root=root, say=say, console=console)
    say(f"building {', '.join(plans.frontend.tags)} on {plans.frontend.build_args['BASE_IMAGE']}")
    frontend = build_image(client, plans.frontend, console=console, scratch=root / ".cache")
    return [runtime, frontend]


def build_frontend_image(
    client: docker.DockerClient,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
    no_cache: bool = False,
) -> BuiltImage:
    """Base image (when missing) -> ``tfstack/frontend`` build."""
    base = plan_base_image(client)
    apply_base_image(base, say=say)
    plan = plan_frontend_build(client, root=root, no_cache=no_cache, try_pull=False)
    say(f"building {', '.join(plan.tags)} on {plan.build_args['BASE_IMAGE']}")
    return build_image(
        client, plan, console=console or Console(stderr=True), scratch=root / ".cache"
    )


def ensure_frontend_image(client: Any, image: str, *, source_root: Path, say: Say) -> str:
    """The image id of the door's image: present, else built (tfstack/frontend), else pulled."""
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        pass
    if image.split(":", 1)[0] == FRONTEND_REPOSITORY:
        say(f"image {image} is missing: building it (HAProxy from Debian, about a minute)")
        build_frontend_image(client, root=source_root, say=say)
        return str(client.images.get(image).id)
    try:
        client.images.pull(image)
        return str(client.images.get(image).id)
    except docker.errors.DockerException as exc:
        raise BuildError(
            f"image {image} is not on the engine and cannot be pulled: {exc}",
            image=image,
            hint=f"use {FRONTEND_IMAGE} (built locally by `invoke images`) in frontend.image",
        ) from exc
