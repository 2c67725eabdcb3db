"""Fixtures of the Kubernetes tests: rendered variants and a kubectl (installed when missing)."""

from __future__ import annotations

import pytest

from tests.unit.kubernetes.variants import VARIANTS, Variant
from tfstack.kubernetes import KubernetesManifests, ensure_kubectl


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Variant:
    return VARIANTS[request.param]()


@pytest.fixture
def manifests(variant: Variant) -> KubernetesManifests:
    return variant.render()


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl, from Debian's kubernetes-client when missing: these tests never skip."""
    return ensure_kubectl(print)
