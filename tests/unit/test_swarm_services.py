"""The Swarm target's one reader of a stack's services (serving, canary) and the canary as
``status`` shows it, against a fake manager (no Docker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tfstack.core.labels import LABEL_MODEL
from tfstack.rollout.canary import LABEL_CANARY_VERSION
from tfstack.stack.swarm import (
    InspectedService,
    SwarmStatus,
    canary_service,
    canary_status,
    inspect_service,
    serving_service,
)

SERVING_IMAGE = "tfstack-registry:5000/tfstack/serving-runtime:id-1@sha256:ab"


def _service(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "ID": f"id-{name}",
        "Spec": {
            "Name": name,
            "Labels": labels,
            "TaskTemplate": {"ContainerSpec": {"Image": SERVING_IMAGE}},
        },
    }


class FakeManager:
    """The docker CLI on a manager: ``service inspect`` and ``service ps`` of known services,
    answering as the CLI does for a missing one (exit 1, ``[]`` on stdout)."""

    url = "tcp://127.0.0.1:23750"

    def __init__(self, services: dict[str, dict[str, Any]], listing: str = "") -> None:
        self.services = services
        self.listing = listing
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args: str, check: bool = True, **_: Any) -> str:
        self.calls.append(args)
        if args[:2] == ("service", "inspect"):
            found = self.services.get(args[2])
            return json.dumps([found]) if found else "[]"
        if args[:2] == ("service", "ps"):
            return self.listing
        raise AssertionError(f"unexpected command {args}")


CANARY = _service("demo_canary", {LABEL_MODEL: "half_plus_two", LABEL_CANARY_VERSION: "3"})
SERVING = _service("demo_serving", {"com.docker.stack.namespace": "demo"})


def test_a_service_is_read_by_name_with_its_labels_image_and_whole_item() -> None:
    manager = FakeManager({"demo_serving": SERVING})
    found = inspect_service(manager, "demo_serving")  # type: ignore[arg-type]
    assert found is not None and found == InspectedService(SERVING)
    assert found.image == SERVING_IMAGE
    assert found.labels == {"com.docker.stack.namespace": "demo"}
    assert inspect_service(manager, "demo_models") is None  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", ["[]", "", "Error: no such service"])
def test_a_missing_service_or_no_answer_is_none(answer: str) -> None:
    manager = FakeManager({})
    manager.run = lambda *args, **_: answer  # type: ignore[method-assign]
    assert inspect_service(manager, "demo_serving") is None  # type: ignore[arg-type]


def test_the_serving_and_the_canary_service_are_looked_up_by_their_stack_names() -> None:
    manager = FakeManager({"demo_serving": SERVING, "demo_canary": CANARY})
    serving = serving_service(manager, "demo")  # type: ignore[arg-type]
    canary = canary_service(manager, "demo")  # type: ignore[arg-type]
    assert serving == InspectedService(SERVING)
    assert canary == InspectedService(CANARY)
    assert manager.calls == [
        ("service", "inspect", "demo_serving"),
        ("service", "inspect", "demo_canary"),
    ]
    assert serving_service(FakeManager({}), "other") is None  # type: ignore[arg-type]


def test_status_shows_the_canary_read_through_the_one_reader() -> None:
    """The canary's model and version come from its service's labels, its tasks from
    ``service ps`` (running ones, the state's first word), in the document status prints."""
    manager = FakeManager(
        {"demo_canary": CANARY},
        listing="tfstack-node-2\tRunning 5 seconds ago\ntfstack-node-3\tStarting 1 second ago\n",
    )
    found = canary_status(manager, "demo")  # type: ignore[arg-type]
    assert found == {
        "service": "demo_canary",
        "model": "half_plus_two",
        "version": "3",
        "tasks": [
            {"node": "tfstack-node-2", "state": "Running"},
            {"node": "tfstack-node-3", "state": "Starting"},
        ],
    }
    listed = manager.calls[1]
    assert listed[:2] == ("service", "ps") and listed[-1] == "demo_canary"
    assert "desired-state=running" in listed
    status = SwarmStatus(
        stack="demo",
        manager=manager.url,
        endpoint_mode="dnsrr",
        nodes=[],
        tasks=[],
        services={},
        per_task=[],
        probe_error=None,
        door="http://127.0.0.1:8501",
        door_ok=True,
        expected={},
        canary=found,
    )
    assert (
        "canary demo_canary: half_plus_two version 3 (tasks: tfstack-node-2 Running, "
        "tfstack-node-3 Starting)" in status.describe()
    )


def test_no_canary_is_none_without_listing_tasks() -> None:
    manager = FakeManager({"demo_serving": SERVING})
    assert canary_status(manager, "demo") is None  # type: ignore[arg-type]
    assert manager.calls == [("service", "inspect", "demo_canary")]
