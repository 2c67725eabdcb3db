"""Integration fixtures: a real Docker engine (installed and started when allowed)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tfstack.build.images import BuiltImage, ensure_runtime_image
from tfstack.docker.engine import ensure_engine
from tfstack.models.demo import write_demo_models

# Ryuk (testcontainers' reaper) needs an image from a registry; we clean up through labels.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = ensure_engine()
    yield client
    client.close()


@pytest.fixture(scope="session")
def runtime_image(docker_client: docker.DockerClient) -> BuiltImage:
    """The modelserver runtime image, current with the working tree: built on first use, later a
    layer-cached rebuild of a few seconds (a changed server adds only a small layer).

    Run containers from ``runtime_image.id``: another session's build may move the tags.
    """
    root = Path(__file__).resolve().parents[2]
    built = ensure_runtime_image(
        docker_client, root=root, say=lambda text: print(f"tfstack: {text}", file=sys.stderr)
    )
    print(f"tfstack: {built.summary()}", file=sys.stderr)
    return built


@pytest.fixture(scope="session")
def demo_models() -> Iterator[Path]:
    """The demo model repository (half_plus_two, half_plus_three, ResNet-50), written once.

    A clean clone has no ``models/`` (``./tfstack models`` writes it); tests never depend on it.
    Readable by the server's uid 1000, like a repository ``./tfstack models`` writes.
    """
    with tempfile.TemporaryDirectory(prefix="tfstack-it-models-") as tmp:
        root = Path(tmp) / "models"
        write_demo_models(root)
        for item in [Path(tmp), *Path(tmp).rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        yield root
