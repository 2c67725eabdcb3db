"""The stack's Prometheus image ``tfstack/prometheus``: Debian's package on tfstack's Debian base.

One of tfstack's service images (:mod:`tfstack.build.auxiliary`), built like the front door's image
(a plan as data, performed by :func:`tfstack.build.images.build_image`) with no registry: the base
is ``tfstack/debian:<suite>`` and Prometheus comes from the Debian mirror the base's apt sources
name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfstack.build.auxiliary import AuxiliaryImage, ensure_auxiliary_image
from tfstack.core.progress import Say
from tfstack.spec.model import PROMETHEUS_IMAGE

PROMETHEUS = AuxiliaryImage(
    repository=PROMETHEUS_IMAGE.split(":", 1)[0],
    version="2.42",  # Debian bookworm's prometheus package
    target="prometheus",
    docker_dir=Path("dockerfiles/prometheus"),
    title="tfstack-prometheus",
    description="tfstack's Prometheus: Debian's package, "
    "non-root, read-only root file system, data on a volume",
    licenses="Apache-2.0",
    building="Prometheus from Debian, a minute or two",
    hint=f"use {PROMETHEUS_IMAGE} (built locally from Debian's package) in "
    "monitoring.prometheus_image",
)


def ensure_prometheus_image(client: Any, image: str, *, source_root: Path, say: Say) -> str:
    """The image id of the stack's Prometheus: present, else built (tfstack/prometheus), else
    pulled."""
    return ensure_auxiliary_image(client, PROMETHEUS, image, source_root=source_root, say=say)
