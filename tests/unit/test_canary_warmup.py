"""The weighted canary's warm-up (tfstack.rollout.canary.warm_up_canary) and the compose
``canary_start`` around it, with fakes: no engine, no door, no server."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

import tfstack.rollout.runner as runner_module
from tests.unit.specfixtures import Project, valid_spec
from tfstack.docker.compose import ContainerInfo, Replica
from tfstack.errors import RolloutError
from tfstack.rollout.apply import apply
from tfstack.rollout.canary import (
    WARMUP_ROUNDS,
    WarmupRequest,
    rest_warmup_post,
    warm_up_canary,
    warmup_requests,
)
from tfstack.rollout.journal import Journal, ModelState, Step, StepRecord
from tfstack.rollout.plan import Observed, RolloutRequest, plan
from tfstack.rollout.runner import Context, StackRunner
from tfstack.serving.client import RestClient
from tfstack.spec import StackSpec

MODEL = "half_plus_two"
CANARY_URL = "http://172.18.0.9:8501"


def spec_data() -> dict[str, Any]:
    """The fixture spec with a door, gates and three samples (inline, from a file, classify)."""
    data = valid_spec()
    model = data["models"][0]
    model["policy"] = {"specific": [1]}
    model["labels"] = {"stable": 1}
    model["slo"] = {"error_rate": 0.01, "window_seconds": 5}
    model["samples"] = [
        {"name": "predict", "body": {"instances": [1.0, 2.0]}},
        {"name": "from_file", "body_file": "samples/x.json"},
        {
            "name": "cls",
            "method": "classify",
            "signature_name": "c",
            "body": {"examples": [{"x": 1.0}]},
        },
    ]
    data["frontend"] = {"enabled": True}
    return data


def write_project(tmp_path: Path) -> Project:
    project = Project(tmp_path)
    project.write(spec_data())
    (project.spec.parent / "samples").mkdir()
    (project.spec.parent / "samples" / "x.json").write_text('{"instances": [7.0]}')
    project.version(MODEL, 1)
    return project


class Poster:
    """A WarmupPost that records every call and answers from a script (200 by default)."""

    def __init__(self, answers: Mapping[str, Sequence[object]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, dict[str, Any], int]] = []

    def __call__(self, path: str, body: Mapping[str, Any], rounds: int) -> list[object]:
        self.calls.append((path, dict(body), rounds))
        return list(self.answers.get(path, [200] * rounds))


# --------------------------------------------------------------------------- the shared part


def test_the_warmup_requests_are_the_models_samples_at_the_candidate_version(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path)
    spec = StackSpec.model_validate(spec_data())
    made = warmup_requests(spec, project.spec, model=MODEL, version=2)
    assert made == [
        WarmupRequest(
            "predict", f"/v1/models/{MODEL}/versions/2:predict", {"instances": [1.0, 2.0]}
        ),
        WarmupRequest("from_file", f"/v1/models/{MODEL}/versions/2:predict", {"instances": [7.0]}),
        WarmupRequest(
            "cls",
            f"/v1/models/{MODEL}/versions/2:classify",
            {"examples": [{"x": 1.0}], "signature_name": "c"},
        ),
    ]


def test_every_sample_is_posted_the_given_rounds_and_counted(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    spec = StackSpec.model_validate(spec_data())
    post = Poster()
    sent = warm_up_canary(
        post,
        warmup_requests(spec, project.spec, model=MODEL, version=2),
        model=MODEL,
        version=2,
        canary="the canary replica demo-canary",
        logs="docker logs demo-canary",
        rounds=4,
    )
    assert sent == 12
    assert [(path, rounds) for path, _, rounds in post.calls] == [
        (f"/v1/models/{MODEL}/versions/2:predict", 4),
        (f"/v1/models/{MODEL}/versions/2:predict", 4),
        (f"/v1/models/{MODEL}/versions/2:classify", 4),
    ]


def test_an_answer_that_is_not_200_stops_with_the_model_version_canary_and_answer() -> None:
    samples = [
        WarmupRequest("first", "/v1/models/m/versions/3:predict", {"instances": [1.0]}),
        WarmupRequest("second", "/v1/models/m/versions/3:regress", {"examples": []}),
    ]
    post = Poster({samples[0].path: [200, "HTTP 500: boom"]})
    with pytest.raises(RolloutError) as caught:
        warm_up_canary(
            post,
            samples,
            model="m",
            version=3,
            canary="the canary replica demo-canary",
            logs="docker logs demo-canary",
            rounds=3,
        )
    error = caught.value
    text = str(error)
    assert text.startswith("model m version 3, step canary_start: the canary replica demo-canary")
    assert "does not answer sample 'first': [200, 'HTTP 500: boom']" in text
    assert error.step == "canary_start" and error.version == 3
    assert error.hint is not None and "docker logs demo-canary" in error.hint
    assert len(post.calls) == 1  # the second sample is never sent


def test_a_model_without_samples_sends_nothing() -> None:
    post = Poster()
    sent = warm_up_canary(post, [], model="m", version=3, canary="c", logs="l")
    assert sent == 0 and post.calls == []


# --------------------------------------------------------------------------- the compose post


class FakeResponse:
    def __init__(self, status: int, text: str = "{}") -> None:
        self.status_code = status
        self.text = text


class FakeSession(requests.Session):
    """requests' Session with ``post`` answered from a script (a status, or an exception)."""

    def __init__(self, script: Sequence[int | Exception] = ()) -> None:
        super().__init__()
        self.script = list(script)
        self.sent: list[tuple[str, Any, bool]] = []

    def post(self, url: Any, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
        self.sent.append((str(url), json, bool(kwargs.get("allow_redirects", True))))
        answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer, '{"error": "Servable not found"}' if answer != 200 else "{}")


def test_the_compose_post_sends_each_round_to_the_canary_and_reads_the_status() -> None:
    session = FakeSession()
    with RestClient(CANARY_URL, session=session) as rest:
        answers = rest_warmup_post(rest)("/v1/models/m/versions/2:predict", {"instances": [1]}, 3)
    assert answers == [200, 200, 200]
    assert (
        session.sent
        == [(f"{CANARY_URL}/v1/models/m/versions/2:predict", {"instances": [1]}, False)] * 3
    )


@pytest.mark.parametrize(
    ("script", "answers"),
    [
        ([200, 404], [200, 'HTTP 404: {"error": "Servable not found"}']),
        ([301], ['HTTP 301: {"error": "Servable not found"}']),
        ([requests.ConnectionError("refused")], ["no answer: ConnectionError: refused"]),
    ],
)
def test_the_compose_post_stops_at_the_first_answer_that_is_not_200(
    script: list[int | Exception], answers: list[object]
) -> None:
    session = FakeSession(script)
    with RestClient(CANARY_URL, session=session) as rest:
        got = rest_warmup_post(rest)("/v1/models/m/versions/2:predict", {}, 5)
    assert got == answers
    assert len(session.sent) == len(answers)


# --------------------------------------------------------------------------- compose canary_start


class Effects:
    """The engine, the door and the canary's HTTP as canary_start meets them, in one timeline."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.failing: dict[int, int] = {}  # warm-up request number (from 1) -> HTTP status
        self.posted = 0

    def session(self) -> requests.Session:
        effects = self

        class Session(requests.Session):
            def post(self, url: Any, data: Any = None, json: Any = None, **kw: Any) -> Any:
                effects.posted += 1
                effects.events.append(f"post {url}")
                status = effects.failing.get(effects.posted, 200)
                return FakeResponse(status, "{}" if status == 200 else '{"error": "bad"}')

        return Session()


class FakeCanary:
    name = "demo-canary"
    status = "running"
    labels = {"org.tfstack.model": MODEL}


class FakeServing:
    """A serving replica's ``docker inspect``, as far as plan_canary reads it."""

    attrs = {
        "Name": "/demo-serving-1",
        "Config": {"Image": "runtime", "Cmd": ["--model_config_file=/config/x"]},
        "HostConfig": {},
        "NetworkSettings": {"Networks": {"demo_default": {}}},
    }


class FakeContainers:
    def get(self, container_id: str) -> FakeServing:
        return FakeServing()


class FakeClient:
    containers = FakeContainers()


def info(name: str, service: str) -> ContainerInfo:
    return ContainerInfo(name, name, service, "running", None, 0, "", "", "")


class CanaryRunner(StackRunner):
    """The real canary_start; every other step is recorded and passes."""

    def __init__(self, context: Context, effects: Effects) -> None:
        super().__init__(context)
        self.effects = effects

    def _containers(self, spec: Any) -> list[Any]:
        return [info("demo-serving-1", "serving"), info("demo-frontend-1", "frontend")]

    def _record(self, step: Step) -> str:
        self.effects.events.append(step.name)
        return f"{step.name} ok"

    def transition(self, step: Step, journal: Journal) -> str:
        return self._record(step)

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str:
        return self._record(step)

    def verify(self, step: Step, journal: Journal) -> str:
        return self._record(step)

    def remove_version(self, step: Step, journal: Journal) -> str:
        return self._record(step)

    def traffic(self, step: Step, journal: Journal) -> str:
        return self._record(step)

    def canary_stop(self, step: Step, journal: Journal) -> str:
        return self._record(step)

    def sleep(self, seconds: float) -> None:
        pass


@pytest.fixture
def effects(monkeypatch: pytest.MonkeyPatch) -> Iterator[Effects]:
    made = Effects()
    started: list[bool] = []

    def start_canary(client: Any, plan_: Any, **kw: Any) -> Replica:
        made.events.append(f"start {plan_.name} version {kw['version']}")
        started.append(True)
        return Replica(plan_.name, CANARY_URL, "172.18.0.9:8500")

    def set_share(door: Any, map_file: str, model: str, percent: int) -> dict[str, int]:
        made.events.append(f"share {percent}")
        return {model: percent}

    def in_rotation(read: Any, name: str, **kw: Any) -> None:
        made.events.append(f"rotation {name}")

    patches: dict[str, Any] = {
        "existing_canary": lambda client, project: FakeCanary() if started else None,
        "canary_config_text": lambda *a: "model_config_list {}\n",
        "door_container": lambda client, containers: "door",
        "set_share": set_share,
        "start_canary": start_canary,
        "frontend_container": lambda containers: containers[1],
        "wait_replica_in_rotation": in_rotation,
        "RestClient": lambda url, timeout: RestClient(url, timeout=timeout, session=made.session()),
    }
    for name, value in patches.items():
        monkeypatch.setattr(runner_module, name, value)
    yield made


def traffic_journal(spec_text: str) -> Journal:
    state = ModelState({"specific": [1]}, {"stable": 1})
    request = RolloutRequest(MODEL, version=2, source="/s", traffic=(10, 100))
    steps = plan(request, Observed(MODEL, state, (1,), (1,)))
    return Journal(
        project="demo",
        model=MODEL,
        action="rollout",
        version=2,
        original=state,
        original_spec_text=spec_text,
        original_served=(1,),
        previous_stable=1,
        steps=[StepRecord(s) for s in steps],
    )


def traffic_rollout(tmp_path: Path, effects: Effects) -> tuple[Journal, Callable[[], object]]:
    """A --traffic 10,100 journal of version 2 and the call that applies it."""
    project = write_project(tmp_path)
    context = Context(project.spec, tmp_path, MODEL, client=FakeClient())
    journal = traffic_journal(project.spec.read_text())
    runner = CanaryRunner(context, effects)
    return journal, lambda: apply(journal, runner, save=lambda j: None)


def test_the_canary_is_warmed_at_its_version_before_rotation_and_any_share(
    tmp_path: Path, effects: Effects
) -> None:
    """Warm-up after the canary serves N, before the door may route to it and before the first
    traffic step (whose window is baselined at its start); the steps are those of before."""
    journal, run = traffic_rollout(tmp_path, effects)
    run()
    at_version_2 = f"post {CANARY_URL}/v1/models/{MODEL}/versions/2"
    assert effects.events == [
        "stage",
        "verify",
        "share 0",
        "start demo-canary version 2",
        *[f"{at_version_2}:predict"] * WARMUP_ROUNDS,  # predict
        *[f"{at_version_2}:predict"] * WARMUP_ROUNDS,  # from_file
        *[f"{at_version_2}:classify"] * WARMUP_ROUNDS,  # cls
        "rotation demo-canary",
        "traffic_10",
        "traffic_100",
        "load",
        "promote",
        "canary_stop",
    ]
    assert journal.status == "done"
    assert [r.step.name for r in journal.steps] == [
        "stage",
        "verify",
        "canary_start",
        "traffic_10",
        "traffic_100",
        "load",
        "promote",
        "canary_stop",
    ]
    detail = journal.record("canary_start").detail  # type: ignore[union-attr]
    assert f"warmed with {3 * WARMUP_ROUNDS} sample requests" in detail
    assert (tmp_path / "config" / "canary" / "models.config").exists()


def test_a_canary_not_answering_200_fails_canary_start_and_the_rollout_aborts(
    tmp_path: Path, effects: Effects
) -> None:
    """The 7th warm-up request (the second sample's 2nd round) answers 503: canary_start fails
    naming model, version, canary and answer; no share, no rotation, the usual undo."""
    effects.failing = {WARMUP_ROUNDS + 2: 503}
    journal, run = traffic_rollout(tmp_path, effects)
    with pytest.raises(RolloutError) as caught:
        run()
    text = str(caught.value)
    assert "model half_plus_two version 2, step canary_start" in text
    assert "the canary replica demo-canary does not answer sample 'from_file'" in text
    assert '[200, \'HTTP 503: {"error": "bad"}\']' in text
    assert effects.posted == WARMUP_ROUNDS + 2
    assert not [e for e in effects.events if e.startswith(("rotation", "traffic"))]
    assert [e for e in effects.events if e.startswith("share")] == ["share 0"]
    assert effects.events[-2:] == ["canary_stop", "remove_version"]
    assert journal.status == "failed"
    record = journal.record("canary_start")
    assert record is not None and record.status == "failed"
    assert journal.error is not None and "does not answer sample 'from_file'" in journal.error
