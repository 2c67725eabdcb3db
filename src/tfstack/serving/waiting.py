"""Wait strategies: poll a condition with a timeout, an interval and the errors that are expected
while a server starts; on timeout say what was last seen and what to do.

:class:`Poll` is the generic loop (its clock and sleep are injectable, so unit tests never sleep).
:class:`ModelsReady` is the strategy ``invoke up`` uses: every declared version of every model and
every label AVAILABLE, a version that ended with an error reported as a failure (after the other
models settled), and a container that exited reported at once with its log tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import requests

from tfstack.core.modelstatus import VersionState
from tfstack.errors import StackError
from tfstack.serving.client import ModelRef, RestClient, ServingRequestError

T = TypeVar("T")

TRANSIENT_HTTP_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
)
"""Expected while the server starts: its ports open only after every startup model settled."""


class WaitTimeout(StackError):
    """A wait ran out of time; the message says what was last seen."""


class LoadFailed(StackError):
    """A model version ended with an error (the other models may be serving)."""

    def __init__(
        self, message: str, *, failures: Sequence[tuple[str, int, str]], hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.failures = list(failures)


@dataclass
class Poll(Generic[T]):
    """Call ``probe`` every ``interval`` s until ``done(result)`` or ``timeout`` s passed.

    Exceptions of the ``transient`` types raised by ``probe`` count as "not yet"; the last one is
    kept for the timeout message. Any other exception (including a StackError raised by ``done``
    to fail fast) propagates immediately.
    """

    timeout: float
    interval: float = 0.5
    transient: tuple[type[BaseException], ...] = TRANSIENT_HTTP_ERRORS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.timeout < 0 or self.interval <= 0:
            raise ValueError(f"bad wait: timeout={self.timeout}, interval={self.interval}")

    def until(
        self,
        probe: Callable[[], T],
        done: Callable[[T], bool],
        *,
        on_timeout: Callable[[T | None, BaseException | None, float], StackError],
        on_progress: Callable[[T | None, BaseException | None], None] | None = None,
    ) -> T:
        """The first probe result ``done`` accepts; else raises ``on_timeout(...)``."""
        start = self.clock()
        deadline = start + self.timeout
        last: T | None = None
        error: BaseException | None = None
        while True:
            try:
                last = probe()
                error = None
            except self.transient as exc:
                error = exc
            else:
                if done(last):
                    return last
            if on_progress is not None:
                on_progress(last, error)
            now = self.clock()
            if now >= deadline:
                raise on_timeout(last, error, now - start)
            self.sleep(min(self.interval, max(deadline - now, 0.0)))


# --------------------------------------------------------------------------------------------
# Models ready


@dataclass(frozen=True)
class ModelExpectation:
    """What ``up`` waits for for one model: these versions AVAILABLE and these labels resolving."""

    name: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelObservation:
    """What the server said about one model: version states, label targets, or an error."""

    name: str
    versions: tuple[VersionState, ...] = ()
    labels: Mapping[str, int | None] = field(default_factory=dict)  # label -> version it serves
    error: str | None = None  # e.g. "Could not find any versions of model m" while it starts


@dataclass(frozen=True)
class Readiness:
    """How far the stack is: models ready, still pending (with why), and failed versions."""

    ready: tuple[str, ...]
    pending: Mapping[str, str]  # model -> what it still waits for
    failures: tuple[tuple[str, int, str], ...]  # (model, version, error message)

    @property
    def settled(self) -> bool:
        """Every model is either ready or has a failed version: waiting longer changes nothing."""
        return not self.pending

    @property
    def ok(self) -> bool:
        return self.settled and not self.failures


def assess(
    expectations: Sequence[ModelExpectation], observed: Mapping[str, ModelObservation]
) -> Readiness:
    """Pure: compare the expected versions and labels with what the server reported."""
    ready: list[str] = []
    pending: dict[str, str] = {}
    failures: list[tuple[str, int, str]] = []
    for expectation in expectations:
        observation = observed.get(expectation.name)
        if observation is None or observation.error is not None:
            pending[expectation.name] = (
                observation.error if observation and observation.error else "no answer yet"
            )
            continue
        states = {state.version: state for state in observation.versions}
        failed_here = [
            (expectation.name, v, states[v].error_message or states[v].error_code)
            for v in expectation.versions
            if v in states and states[v].failed
        ]
        if failed_here:
            failures.extend(failed_here)
            continue
        waiting_for: list[str] = []
        for version in expectation.versions:
            state = states.get(version)
            if state is None or not state.available:
                waiting_for.append(f"version {version} {state.state if state else 'not seen'}")
        for label, version in sorted(expectation.labels.items()):
            if observation.labels.get(label) != version:
                seen = observation.labels.get(label)
                waiting_for.append(
                    f"label {label}->{version} (now {'unset' if seen is None else seen})"
                )
        if waiting_for:
            pending[expectation.name] = ", ".join(waiting_for)
        else:
            ready.append(expectation.name)
    return Readiness(tuple(ready), pending, tuple(failures))


def observe_model(
    rest: RestClient, expectation: ModelExpectation, timeout: float = 5.0
) -> ModelObservation:
    """Ask the REST API for a model's versions and the versions its expected labels resolve to.

    Connection errors propagate (the server is not up yet: transient); HTTP errors become the
    observation's ``error`` (404 while a model is still unknown to the server).
    """
    try:
        versions = rest.model_status(ModelRef(expectation.name), timeout=timeout)
    except ServingRequestError as exc:
        return ModelObservation(expectation.name, error=exc.message)
    labels: dict[str, int | None] = {}
    for label in expectation.labels:
        try:
            resolved = rest.model_status(ModelRef(expectation.name, label=label), timeout=timeout)
        except ServingRequestError:
            labels[label] = None
            continue
        labels[label] = resolved[0].version if resolved else None
    return ModelObservation(expectation.name, tuple(versions), labels)


def describe_models(
    expectations: Sequence[ModelExpectation], observed: Mapping[str, ModelObservation]
) -> list[str]:
    """One line per model: last states of its versions, labels and any error."""
    lines: list[str] = []
    for expectation in expectations:
        observation = observed.get(expectation.name)
        if observation is None:
            lines.append(f"{expectation.name}: no answer from the server")
            continue
        if observation.error:
            lines.append(f"{expectation.name}: {observation.error}")
            continue
        parts = []
        for state in observation.versions:
            text = f"v{state.version} {state.state}"
            if state.failed or state.error_message:
                text += f" ({state.error_code}: {state.error_message})"
            parts.append(text)
        expected = ", ".join(str(v) for v in expectation.versions)
        line = f"{expectation.name}: {'; '.join(parts) or 'no versions'} (expected {expected})"
        if expectation.labels:
            line += "; labels " + ", ".join(
                f"{k}->{observation.labels.get(k)}" for k in sorted(expectation.labels)
            )
        lines.append(line)
    return lines


@dataclass
class ModelsReady:
    """Wait until every expected model version and label is AVAILABLE (``invoke up``'s wait).

    ``service_alive`` (optional) returns None while the server container runs, or a sentence saying
    why it is gone (e.g. "exited with code 1"); ``log_tail`` returns the last server log lines for
    messages. Version failures are collected until every other model settled, then raised as
    :class:`LoadFailed`.
    """

    rest: RestClient
    expectations: Sequence[ModelExpectation]
    poll: Poll[dict[str, ModelObservation]]
    service_alive: Callable[[], str | None] = lambda: None
    log_tail: Callable[[], list[str]] = list
    on_progress: Callable[[Readiness | None, BaseException | None], None] | None = None
    last: dict[str, ModelObservation] = field(default_factory=dict)

    def probe(self) -> dict[str, ModelObservation]:
        gone = self.service_alive()
        if gone is not None:
            raise StackError(
                f"the serving container {gone} before every model was ready",
                service="serving",
                log_tail=self.log_tail(),
                hint="the log lines above say why; fix the model or flag, then run `invoke up`",
            )
        observed = {e.name: observe_model(self.rest, e) for e in self.expectations}
        self.last = observed
        return observed

    def done(self, observed: dict[str, ModelObservation]) -> bool:
        return assess(self.expectations, observed).settled

    def timeout_error(
        self, last: dict[str, ModelObservation] | None, error: BaseException | None, waited: float
    ) -> StackError:
        lines = describe_models(self.expectations, last or {})
        text = f"models not ready after {waited:.0f}s"
        if error is not None and not last:
            text += f"; the server never answered on {self.rest.base_url} ({type(error).__name__})"
        elif error is not None:
            text += f"; last request failed: {error}"
        text += "\n  last model states:\n" + "\n".join(f"    {line}" for line in lines)
        return WaitTimeout(
            text,
            service="serving",
            log_tail=self.log_tail(),
            hint="a big model may need a longer --timeout; `invoke logs` shows the whole log",
        )

    def _progress(
        self, last: dict[str, ModelObservation] | None, error: BaseException | None
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(assess(self.expectations, last) if last else None, error)

    def wait(self) -> Readiness:
        """Readiness once settled; raises LoadFailed (versions ended in error) or WaitTimeout."""
        observed = self.poll.until(
            self.probe, self.done, on_timeout=self.timeout_error, on_progress=self._progress
        )
        readiness = assess(self.expectations, observed)
        if readiness.failures:
            lines = [f"model {m} version {v}: {msg}" for m, v, msg in readiness.failures]
            serving = ", ".join(readiness.ready) or "none"
            raise LoadFailed(
                "model versions failed to load (state END):\n"
                + "\n".join(f"    {line}" for line in lines)
                + f"\n  still serving: {serving}",
                failures=readiness.failures,
                hint="fix or remove the broken version directory, then run `invoke up` again; "
                "`invoke status` shows each model's state",
            )
        return readiness
