"""Integration fixtures: a real Docker engine (installed and started when allowed)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from tfstack.engine import ensure_engine

# Ryuk (testcontainers' reaper) needs an image from a registry; we clean up through labels.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = ensure_engine()
    yield client
    client.close()
