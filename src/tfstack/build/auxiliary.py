"""The images tfstack builds for a stack's own services on its Debian base (the door, Prometheus).

Each is one Dockerfile under ``dockerfiles/`` installing a Debian package on
``tfstack/debian:<suite>``: an :class:`AuxiliaryImage` names it (repository, version, Dockerfile
folder, labels), :func:`plan_auxiliary_image` turns it into an
:class:`~tfstack.build.images.ImageBuildPlan` (pure) and :func:`ensure_auxiliary_image` gives the id
of an image a spec names: present, else built (when it is this image), else pulled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from rich.console import Console

from tfstack.build.baseimage import apply_base_image, plan_base_image
from tfstack.build.images import (
    BuiltImage,
    ContextEntry,
    ImageBuildPlan,
    build_image,
    ensure_present_image,
    source_info,
)
from tfstack.core.labels import LABEL_MANAGED, LABEL_STAGE
from tfstack.core.progress import Say


@dataclass(frozen=True)
class AuxiliaryImage:
    """One of tfstack's service images: a Debian package on tfstack's Debian base."""

    repository: str  # e.g. tfstack/frontend
    version: str  # the Debian package's branch, the image's version tag
    target: str  # the Dockerfile's stage, also the LABEL_STAGE value
    docker_dir: Path  # the folder of its Dockerfile, relative to the source root
    title: str
    description: str
    licenses: str
    building: str  # what `ensure` says it builds, e.g. "HAProxy from Debian, about a minute"
    hint: str  # the BuildError hint when an image that is not this one cannot be pulled

    @property
    def tags(self) -> tuple[str, str]:
        return (f"{self.repository}:{self.version}", f"{self.repository}:latest")


def plan_auxiliary_image(
    image: AuxiliaryImage,
    *,
    root: Path,
    base_image: str,
    revision: str,
    created: str,
    no_cache: bool = False,
) -> ImageBuildPlan:
    """The build of ``<repository>:<version>`` and ``:latest`` (pure)."""
    labels = {
        "org.opencontainers.image.title": image.title,
        "org.opencontainers.image.description": image.description,
        "org.opencontainers.image.version": image.version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": image.licenses,
        "org.opencontainers.image.base.name": base_image,
        LABEL_MANAGED: "true",
        LABEL_STAGE: image.target,
    }
    return ImageBuildPlan(
        tags=image.tags,
        target=image.target,
        build_args={"BASE_IMAGE": base_image},
        labels=labels,
        context=(ContextEntry(root / image.docker_dir / "Dockerfile", "Dockerfile"),),
        no_cache=no_cache,
        network_mode=None,  # apt-get install reaches the Debian mirror
    )


def plan_auxiliary_build(
    image: AuxiliaryImage, *, root: Path, base_image: str, no_cache: bool = False
) -> ImageBuildPlan:
    """:func:`plan_auxiliary_image` with the revision and time of its Dockerfile folder."""
    source = source_info(root, paths=(str(image.docker_dir),))
    return plan_auxiliary_image(
        image,
        root=root,
        base_image=base_image,
        revision=source.revision,
        created=source.created,
        no_cache=no_cache,
    )


def build_auxiliary_image(
    client: docker.DockerClient,
    image: AuxiliaryImage,
    *,
    root: Path,
    say: Say,
    console: Console | None = None,
    no_cache: bool = False,
) -> BuiltImage:
    """Base image (when missing) -> the image's build on it."""
    apply_base_image(plan_base_image(client), say=say)
    base = plan_base_image(client, try_pull=False)
    plan = plan_auxiliary_build(image, root=root, base_image=base.image, no_cache=no_cache)
    say(f"building {', '.join(plan.tags)} on {plan.build_args['BASE_IMAGE']}")
    return build_image(
        client, plan, console=console or Console(stderr=True), scratch=root / ".cache"
    )


def ensure_auxiliary_image(
    client: Any, image: AuxiliaryImage, reference: str, *, source_root: Path, say: Say
) -> str:
    """The image id of ``reference``: present, else built (``image``'s repository), else pulled."""
    return ensure_present_image(
        client,
        reference,
        repository=image.repository,
        build=lambda: build_auxiliary_image(client, image, root=source_root, say=say),
        building=image.building,
        hint=image.hint,
        say=say,
    )
