"""Wait strategies with a fake clock: timeouts, transient errors, fail-fast, useful messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tfstack.core.modelstatus import VersionState
from tfstack.errors import StackError
from tfstack.serving.client import ModelRef, ServingRequestError
from tfstack.serving.waiting import (
    LoadFailed,
    ModelExpectation,
    ModelObservation,
    ModelsReady,
    Poll,
    WaitTimeout,
    assess,
    describe_models,
)


class FakeClock:
    """time.monotonic and time.sleep without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def poll(clock: FakeClock, timeout: float = 5.0, interval: float = 1.0) -> Poll[Any]:
    return Poll(timeout=timeout, interval=interval, clock=clock.clock, sleep=clock.sleep)


def never(last: Any, error: BaseException | None, waited: float) -> StackError:
    return WaitTimeout(f"timeout after {waited:.1f}s; last={last!r}; error={error!r}")


def test_poll_returns_the_first_accepted_result() -> None:
    """Poll probes every interval and returns as soon as done() accepts."""
    clock = FakeClock()
    answers = iter([1, 2, 3, 4])
    result = poll(clock).until(lambda: next(answers), lambda n: n >= 3, on_timeout=never)
    assert result == 3
    assert clock.sleeps == [1.0, 1.0]


def test_poll_times_out_with_the_last_observation() -> None:
    """After `timeout` seconds of fake time the timeout error says what was last seen."""
    clock = FakeClock()
    counter = iter(range(100))
    with pytest.raises(WaitTimeout, match=r"timeout after 5.0s; last=5"):
        poll(clock).until(lambda: next(counter), lambda n: False, on_timeout=never)
    assert sum(clock.sleeps) == pytest.approx(5.0)


def test_poll_last_sleep_is_clipped_to_the_deadline() -> None:
    """The final sleep never overshoots the deadline."""
    clock = FakeClock()
    with pytest.raises(WaitTimeout):
        poll(clock, timeout=2.5, interval=1.0).until(lambda: 0, lambda n: False, on_timeout=never)
    assert clock.sleeps == [1.0, 1.0, 0.5]


def test_poll_tolerates_transient_errors_and_reports_the_last() -> None:
    """Connection errors while the server starts count as 'not yet'; the last one is reported."""
    clock = FakeClock()

    def probe() -> int:
        raise requests.ConnectionError("refused")

    with pytest.raises(WaitTimeout, match="refused"):
        poll(clock, timeout=2).until(probe, lambda n: True, on_timeout=never)


def test_poll_propagates_other_errors_immediately() -> None:
    """A non-transient error (a bug, a fail-fast StackError) is not swallowed or retried."""
    clock = FakeClock()

    def probe() -> int:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        poll(clock).until(probe, lambda n: True, on_timeout=never)
    assert clock.sleeps == []


def test_poll_rejects_bad_settings() -> None:
    """A zero interval would spin; it is refused."""
    with pytest.raises(ValueError):
        Poll(timeout=1, interval=0)


def avail(version: int) -> VersionState:
    return VersionState(version, "AVAILABLE")


EXPECT = [
    ModelExpectation("a", (1, 2), {"stable": 1}),
    ModelExpectation("b", (3,)),
]


def test_assess_ready_pending_and_failed() -> None:
    """assess tells ready models, what pending ones wait for, and failed versions."""
    observed = {
        "a": ModelObservation("a", (avail(1), VersionState(2, "LOADING")), {"stable": 1}),
        "b": ModelObservation("b", (VersionState(3, "END", "INVALID_ARGUMENT", "corrupt"),)),
    }
    readiness = assess(EXPECT, observed)
    assert readiness.ready == ()
    assert readiness.pending == {"a": "version 2 LOADING"}
    assert readiness.failures == (("b", 3, "corrupt"),)
    assert not readiness.settled
    observed["a"] = ModelObservation("a", (avail(1), avail(2)), {"stable": 1})
    settled = assess(EXPECT, observed)
    assert settled.settled and not settled.ok and settled.ready == ("a",)


def test_assess_waits_for_labels_and_unknown_models() -> None:
    """A label resolving elsewhere, or a model the server does not know yet, keeps waiting."""
    observed = {
        "a": ModelObservation("a", (avail(1), avail(2)), {"stable": None}),
        "b": ModelObservation("b", error="Could not find any versions of model b"),
    }
    readiness = assess(EXPECT, observed)
    assert readiness.pending == {
        "a": "label stable->1 (now unset)",
        "b": "Could not find any versions of model b",
    }


class FakeRest:
    """RestClient.model_status answers from a script of states per call."""

    base_url = "http://127.0.0.1:18501"

    def __init__(self, answer: Callable[[ModelRef, int], list[VersionState]]) -> None:
        self.answer = answer
        self.calls = 0

    def model_status(self, ref: ModelRef, timeout: float | None = None) -> list[VersionState]:
        self.calls += 1
        return self.answer(ref, self.calls)


def test_models_ready_collects_load_failures_after_others_settle() -> None:
    """A corrupt version fails `up` with its error, but only once the other models are ready."""

    def answer(ref: ModelRef, call: int) -> list[VersionState]:
        if ref.name == "broken":
            return [VersionState(1, "END", "DATA_LOSS", "Could not parse saved_model.pb")]
        if call < 6:
            return [VersionState(1, "LOADING")]
        return [avail(1)]

    clock = FakeClock()
    wait = ModelsReady(
        FakeRest(answer),  # type: ignore[arg-type]
        [ModelExpectation("ok", (1,)), ModelExpectation("broken", (1,))],
        poll(clock, timeout=60, interval=0.5),
    )
    with pytest.raises(LoadFailed) as caught:
        wait.wait()
    assert caught.value.failures == [("broken", 1, "Could not parse saved_model.pb")]
    text = str(caught.value)
    assert "model broken version 1: Could not parse saved_model.pb" in text
    assert "still serving: ok" in text
    assert clock.sleeps, "it waited for the healthy model to become AVAILABLE first"


def test_models_ready_fails_fast_when_the_container_exits() -> None:
    """A server that exits is reported at once with its log tail, not after the timeout."""
    clock = FakeClock()
    wait = ModelsReady(
        FakeRest(lambda ref, call: [avail(1)]),  # type: ignore[arg-type]
        [ModelExpectation("m", (1,))],
        poll(clock, timeout=60),
        service_alive=lambda: "demo-serving-1 exited with code 1",
        log_tail=lambda: ["Failed to start server. Error: bad model"],
    )
    with pytest.raises(StackError) as caught:
        wait.wait()
    assert "exited with code 1" in str(caught.value)
    assert "Failed to start server. Error: bad model" in str(caught.value)
    assert clock.sleeps == []


def test_models_ready_timeout_names_each_models_last_state_and_the_log() -> None:
    """A timeout message lists each model's last state, the load error, and the server log tail."""

    def answer(ref: ModelRef, call: int) -> list[VersionState]:
        if ref.label is not None:
            raise ServingRequestError("label unknown", status=400)
        return [VersionState(1, "LOADING")]

    clock = FakeClock()
    wait = ModelsReady(
        FakeRest(answer),  # type: ignore[arg-type]
        [ModelExpectation("m", (1,), {"stable": 1})],
        poll(clock, timeout=10, interval=1),
        log_tail=lambda: ["Loading servable m version 1"],
    )
    with pytest.raises(WaitTimeout) as caught:
        wait.wait()
    text = str(caught.value)
    assert "models not ready after 10s" in text
    assert "m: v1 LOADING (expected 1); labels stable->None" in text
    assert "Loading servable m version 1" in text
    assert "--timeout" in text


def test_models_ready_timeout_when_the_server_never_answers() -> None:
    """When the REST port never opens the message says the server never answered."""

    def answer(ref: ModelRef, call: int) -> list[VersionState]:
        raise requests.ConnectionError("connection refused")

    clock = FakeClock()
    wait = ModelsReady(
        FakeRest(answer),  # type: ignore[arg-type]
        [ModelExpectation("m", (1,))],
        poll(clock, timeout=3),
    )
    with pytest.raises(WaitTimeout, match=r"never answered on http://127\.0\.0\.1:18501"):
        wait.wait()


def test_models_ready_reports_progress() -> None:
    """Progress callbacks see None before the server answers, then the readiness."""
    seen: list[Any] = []
    answers = iter([requests.ConnectionError("x"), [VersionState(1, "LOADING")], [avail(1)]])

    def answer(ref: ModelRef, call: int) -> list[VersionState]:
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    clock = FakeClock()
    ModelsReady(
        FakeRest(answer),  # type: ignore[arg-type]
        [ModelExpectation("m", (1,))],
        poll(clock, timeout=30),
        on_progress=lambda readiness, error: seen.append(readiness),
    ).wait()
    assert seen[0] is None
    assert seen[1].pending == {"m": "version 1 LOADING"}


def test_describe_models_lines() -> None:
    """describe_models gives one readable line per model, including load errors."""
    lines = describe_models(
        EXPECT,
        {
            "a": ModelObservation(
                "a", (VersionState(1, "END", "NOT_FOUND", "no file"),), {"stable": 1}
            )
        },
    )
    assert lines == [
        "a: v1 END (NOT_FOUND: no file) (expected 1, 2); labels stable->1",
        "b: no answer from the server",
    ]
