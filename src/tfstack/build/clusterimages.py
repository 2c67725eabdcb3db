"""Images of the local Swarm cluster, built offline from the debootstrapped Debian base.

A node is Debian with Debian's ``docker.io`` (a whole Docker engine in a container); the registry is
Debian's ``docker-registry`` (distribution 2.8). Both come from apt through the engine's legacy
builder: nothing is pulled from a registry. Each image is tagged by the digest of its Dockerfile, so
a changed recipe builds a new image and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from tfstack.errors import BuildError

BASE_IMAGE = "tfstack/debian:bookworm"
MANAGED_LABEL = "org.tfstack.managed"
ROLE_LABEL = "org.tfstack.role"
BUILD_TIMEOUT_S = 900

_APT = (
    "RUN apt-get update -q \\\n"
    "    && apt-get install -y -q --no-install-recommends {packages} \\\n"
    "    && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
)

NODE_DOCKERFILE = (
    f"FROM {BASE_IMAGE}\n"
    + _APT.format(packages="docker.io iptables ca-certificates procps")
    + f'LABEL {MANAGED_LABEL}="true" {ROLE_LABEL}="cluster-node-image"\n'
)
"""A Swarm node: dockerd (started by the cluster with its own flags) and the docker CLI."""

REGISTRY_CONFIG = "/etc/docker/registry/tfstack.yml"
"""The registry's config in its image (storage.delete.enabled: manifests can be deleted)."""
REGISTRY_BINARY = "/usr/bin/docker-registry"

REGISTRY_DOCKERFILE = (
    f"FROM {BASE_IMAGE}\n"
    + _APT.format(packages="docker-registry")
    # Debian's default config asks for htpasswd auth; the cluster's registry is reachable only
    # from its own network and 127.0.0.1, so it serves plain HTTP without auth.
    + "RUN printf '%s\\n' 'version: 0.1' 'storage:' '  filesystem:'"
    " '    rootdirectory: /var/lib/docker-registry' '  delete:' '    enabled: true'"
    f" 'http:' '  addr: :5000' > {REGISTRY_CONFIG}\n"
    + f'LABEL {MANAGED_LABEL}="true" {ROLE_LABEL}="registry-image"\n'
    + "USER docker-registry\n"
    + "EXPOSE 5000\n"
    + f'ENTRYPOINT ["{REGISTRY_BINARY}", "serve", "{REGISTRY_CONFIG}"]\n'
)
"""Debian's docker-registry: plain HTTP on :5000, blobs under /var/lib/docker-registry."""


@dataclass(frozen=True)
class ImageRecipe:
    """One image to build from an inline Dockerfile; the tag carries the Dockerfile's digest."""

    repository: str
    dockerfile: str

    @property
    def tag(self) -> str:
        digest = hashlib.sha256(self.dockerfile.encode("utf-8")).hexdigest()[:12]
        return f"{self.repository}:{digest}"


NODE_IMAGE = ImageRecipe("tfstack/cluster-node", NODE_DOCKERFILE)
REGISTRY_IMAGE = ImageRecipe("tfstack/registry", REGISTRY_DOCKERFILE)


def image_exists(tag: str, docker: str = "docker") -> bool:
    """Whether the engine has ``tag`` already."""
    result = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def build_recipe(recipe: ImageRecipe, *, say: Callable[[str], None], docker: str = "docker") -> str:
    """Build ``recipe`` unless its tag exists; the tag. BuildError with the build's tail."""
    if image_exists(recipe.tag, docker):
        return recipe.tag
    if not image_exists(BASE_IMAGE, docker):
        raise BuildError(
            f"base image {BASE_IMAGE} is missing, needed for {recipe.repository}",
            hint="run `./tfstack images` once (it debootstraps the base image)",
        )
    say(f"building {recipe.tag} (apt, legacy builder)")
    try:
        result = subprocess.run(
            [docker, "build", "--quiet", "--tag", recipe.tag, "-"],
            input=recipe.dockerfile,
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT_S,
            env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"building {recipe.tag} took over {BUILD_TIMEOUT_S} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BuildError(
            f"building {recipe.tag} failed:\n{tail}",
            hint="the build installs Debian packages with apt: check the apt sources of the base",
        )
    return recipe.tag
