"""pytest plugin of tfstack's test kit (entry point ``tfstack`` in ``pytest11``).

Fixtures (none is autouse; importing this module starts nothing):

* ``tfserving``: a :class:`~tfstack.testing.TFServingContainer` per test, configured by the
  ``tfserving`` marker (its keyword arguments are the container's) or by overriding the
  ``tfserving_options`` fixture::

      @pytest.mark.tfserving(models={"half_plus_two": "models/half_plus_two"})
      def test_math(tfserving):
          assert tfserving.predict("half_plus_two", [1.0]) == [2.5]

* ``tfstack_stack``: a factory; ``tfstack_stack("config/stack.yaml")`` brings the spec's whole
  stack up with tfstack's lifecycle and returns a :class:`~tfstack.testing.StackHandle`; every
  stack it started is brought down after the test.

At the end of the session the kit's containers of this session are removed by label, also those of
tests that crashed; containers of earlier crashed runs are removed before the first one starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tfstack.errors import UsageError
from tfstack.testing.cleanup import SESSION_ID, remove_session
from tfstack.testing.container import TFServingContainer
from tfstack.testing.stack import StackHandle, stack_up

MARKER = "tfserving"
_started = {"any": False}  # whether this session ran a kit container (no Docker otherwise)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**kwargs): arguments of the tfserving fixture's TFServingContainer "
        "(image=, models=, model_config=, batching=, ...)",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _started["any"]:
        return
    client = docker.from_env()
    try:
        remove_session(client, SESSION_ID)
    finally:
        client.close()


@pytest.fixture
def tfserving_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments of the ``tfserving`` container: the ``tfserving`` marker's, by default.
    Override this fixture to configure it for a module or a whole conftest."""
    marker = request.node.get_closest_marker(MARKER)
    return dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
def tfserving(tfserving_options: dict[str, Any]) -> Iterator[TFServingContainer]:
    """A TFServingContainer whose models are AVAILABLE, removed after the test."""
    if not tfserving_options:
        raise UsageError(
            "the tfserving fixture has no models to serve",
            hint='mark the test @pytest.mark.tfserving(models={"name": "path/to/model"}) or '
            "override the tfserving_options fixture",
        )
    container = TFServingContainer(**tfserving_options)
    _started["any"] = True
    with container:
        yield container


@pytest.fixture
def tfstack_stack() -> Iterator[Callable[..., StackHandle]]:
    """Factory: ``tfstack_stack(spec_path, timeout=...)`` brings a spec's stack up (down after the
    test)."""
    handles: list[StackHandle] = []

    def start(spec_path: str | Path, **kwargs: Any) -> StackHandle:
        handle = stack_up(spec_path, **kwargs)
        handles.append(handle)
        return handle

    yield start
    errors: list[BaseException] = []
    for handle in reversed(handles):
        try:
            handle.down()
        except Exception as exc:  # bring every other stack down before reporting
            errors.append(exc)
    if errors:
        raise errors[0]
