"""A rollout behind the door: labels asked through the door, rotation waits, replicas required."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import pytest

from tfstack.errors import RolloutError, StackError
from tfstack.rollout.door import ask_labels_through_door, replicas_behind_door
from tfstack.serving.client import ModelRef, ServingRequestError
from tfstack.serving.door import DoorAccess, DoorServer, DoorStatus, wait_replica_in_rotation
from tfstack.spec import SampleRequest, StackSpec


class FakeRest:
    """Records every request; refuses the labels in ``refuse``."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.asked: list[tuple[str, ModelRef]] = []

    def _answer(self, kind: str, ref: ModelRef) -> None:
        self.asked.append((kind, ref))
        if ref.label in self.refuse:
            raise ServingRequestError("Unrecognized servable version label", status=404)

    def predict(self, ref: ModelRef, body: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        self._answer("predict", ref)
        return {"predictions": [2.5]}

    def model_status(self, ref: ModelRef) -> list[Any]:
        self._answer("status", ref)
        return []


class FakeAccess:
    def __init__(self, rest: FakeRest) -> None:
        self._rest = rest

    @contextmanager
    def rest(self) -> Iterator[FakeRest]:
        yield self._rest


SPEC = cast(StackSpec, object())  # not read when an access is given
SAMPLE = SampleRequest(name="one", body={"instances": [1.0]})


def ask(rest: FakeRest, labels: Mapping[str, int], samples: list[Any], replicas: int) -> str:
    return ask_labels_through_door(
        SPEC,
        cast(Any, None),
        "m",
        labels,
        samples,
        replicas=replicas,
        step="promote",
        access=cast(DoorAccess, FakeAccess(rest)),
    )


def test_every_label_is_asked_twice_per_replica_with_the_first_sample() -> None:
    rest = FakeRest(set())
    detail = ask(rest, {"stable": 2, "canary": 3}, [(SAMPLE, {"instances": [1.0]})], replicas=3)
    assert detail == "labels canary, stable asked 6x through the door"
    assert [ref.label for _, ref in rest.asked] == ["canary"] * 6 + ["stable"] * 6
    assert {kind for kind, _ in rest.asked} == {"predict"}


def test_without_samples_the_labels_model_status_is_asked() -> None:
    rest = FakeRest(set())
    ask(rest, {"stable": 1}, [], replicas=2)
    assert rest.asked == [("status", ModelRef("m", label="stable"))] * 4


def test_a_refused_label_fails_the_step_with_the_doors_answer() -> None:
    rest = FakeRest({"stable"})
    with pytest.raises(RolloutError, match="refused a label") as raised:
        ask(rest, {"stable": 2}, [], replicas=2)
    assert raised.value.step == "promote"
    assert raised.value.evidence == ["label stable: Unrecognized servable version label"]
    assert len(rest.asked) == 1  # the first refusal ends that label's asks


def test_no_labels_no_requests() -> None:
    rest = FakeRest(set())
    assert ask(rest, {}, [], replicas=2) == ""
    assert rest.asked == []


def test_no_replica_behind_the_door_is_an_error_that_says_up() -> None:
    spec = cast(Any, type("S", (), {"serving": type("V", (), {"rest_port": 1, "grpc_port": 2})}))
    with pytest.raises(RolloutError, match="no serving replica") as raised:
        replicas_behind_door(object(), spec, [], model="m")
    assert "invoke up" in (raised.value.hint or "")


def server(backend: str, container: str, status: str) -> DoorServer:
    return DoorServer(backend, "replica1", "10.0.0.2:8501", status, "L7OK", 0, 0, 0, 0, container)


def test_waiting_for_one_replica_needs_it_in_both_backends() -> None:
    views = iter(
        [
            DoorStatus("door", "running", error="stats unreadable"),  # just started
            DoorStatus(
                "door", "running", (server("rest", "p-2", "UP"), server("grpc", "p-2", "DOWN"))
            ),
            DoorStatus(
                "door", "running", (server("rest", "p-2", "UP"), server("grpc", "p-2", "UP"))
            ),
        ]
    )
    status = wait_replica_in_rotation(lambda: next(views), "p-2", timeout=5, interval=0)
    assert status is not None and status.in_rotation("grpc") == ["p-2"]


def test_without_a_running_door_there_is_nothing_to_wait_for() -> None:
    """No door container, or one that is stopped: nothing routes requests; no wait."""
    assert wait_replica_in_rotation(lambda: None, "p-2", timeout=60) is None
    stopped = DoorStatus("door", "exited", error="the door is not running")
    assert wait_replica_in_rotation(lambda: stopped, "p-2", timeout=60) is stopped


def test_a_replica_that_stays_out_times_out_naming_it() -> None:
    down = DoorStatus("door", "running", (server("rest", "p-2", "DOWN 1/2"),))
    with pytest.raises(StackError, match="not put p-2 back in rotation"):
        wait_replica_in_rotation(lambda: down, "p-2", timeout=0.05, interval=0.01)
