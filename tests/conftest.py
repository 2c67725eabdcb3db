"""Shared test configuration: the two tiers and their markers.

Unit tests (tests/unit) never need Docker. Integration tests (tests/integration) are marked
`integration` automatically and get their engine through the fixtures in tests/integration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
