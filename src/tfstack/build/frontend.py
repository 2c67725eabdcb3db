"""The front door image ``tfstack/frontend``: Debian's HAProxy on tfstack's own Debian base.

One of tfstack's service images (:mod:`tfstack.build.auxiliary`), built like the runtime image (a
plan as data, performed by :func:`tfstack.build.images.build_image`) with no registry: the base is
``tfstack/debian:<suite>`` (debootstrapped by :mod:`tfstack.build.baseimage` when it cannot be
pulled) and HAProxy comes from the Debian mirror the base's apt sources name, so this build needs
the network the runtime build does without.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from rich.console import Console

from tfstack.build.auxiliary import (
    AuxiliaryImage,
    ensure_auxiliary_image,
    plan_auxiliary_build,
    plan_auxiliary_image,
)
from tfstack.build.images import (
    BuiltImage,
    ImageBuildPlan,
    RuntimeImagePlans,
    apply_runtime_build,
    build_image,
    plan_runtime_build,
)
from tfstack.core.progress import Say
from tfstack.spec import FRONTEND_IMAGE

FRONTEND = AuxiliaryImage(
    repository=FRONTEND_IMAGE.split(":", 1)[0],
    version="2.6",  # Debian bookworm's HAProxy branch
    target="frontend",
    docker_dir=Path("dockerfiles/frontend"),
    title="tfstack-frontend",
    description="tfstack's front door: HAProxy from Debian, non-root, read-only root file system",
    licenses="GPL-2.0-or-later",
    building="HAProxy from Debian, about a minute",
    hint=f"use {FRONTEND_IMAGE} (built locally by `invoke images`) in frontend.image",
)


def plan_frontend_image(
    *, root: Path, base_image: str, revision: str, created: str, no_cache: bool = False
) -> ImageBuildPlan:
    """The build of ``tfstack/frontend:<version>`` and ``:latest`` (pure)."""
    return plan_auxiliary_image(
        FRONTEND,
        root=root,
        base_image=base_image,
        revision=revision,
        created=created,
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
    frontend = plan_auxiliary_build(
        FRONTEND, root=root, base_image=runtime.base.image, no_cache=no_cache
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


def ensure_frontend_image(client: Any, image: str, *, source_root: Path, say: Say) -> str:
    """The image id of the door's image: present, else built (tfstack/frontend), else pulled."""
    return ensure_auxiliary_image(client, FRONTEND, image, source_root=source_root, say=say)
