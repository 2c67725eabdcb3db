"""The front door's direct replica addresses: a vanished container has none, a bug surfaces."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from tfstack.serving.door import container_addresses


class Containers:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def get(self, container_id: str) -> Any:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class Client:
    def __init__(self, outcome: Any) -> None:
        self.containers = Containers(outcome)


class Container:
    attrs = {
        "NetworkSettings": {
            "Networks": {"p_default": {"IPAddress": "172.20.0.3"}, "other": {"IPAddress": ""}}
        }
    }


def test_addresses_are_read_from_every_network() -> None:
    """Each network's IPv4 address is listed; networks without one are skipped."""
    assert container_addresses(Client(Container()), "c1") == ["172.20.0.3"]


def test_a_container_gone_or_refused_by_the_engine_has_no_address() -> None:
    """NotFound and other engine refusals mean the container just went away: no address."""
    assert container_addresses(Client(docker.errors.NotFound("gone")), "c1") == []
    assert container_addresses(Client(docker.errors.APIError("conflict")), "c1") == []


def test_a_programming_error_is_not_taken_for_a_vanished_container() -> None:
    """Anything but an engine error propagates instead of reading as "no address"."""
    with pytest.raises(TypeError):
        container_addresses(Client(TypeError("bug")), "c1")
