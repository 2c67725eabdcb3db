"""``rollout | rollback --target swarm`` without a Swarm: the observer, the plan, the transitions.

The Swarm's effect (``swarm_up``: a new model image and a models service update) is replaced by a
recorder of the spec each transition deployed; stage and verify are the compose runner's (tested in
test_rollout_*) and are stubbed here to record their order only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.specfixtures import Project, valid_spec
from tfstack.errors import RolloutError
from tfstack.rollout.journal import Journal, ModelState, Step, read_journal
from tfstack.rollout.plan import Observed, RolloutRequest
from tfstack.rollout.run import run_rollback, run_rollout
from tfstack.rollout.runner import Context
from tfstack.stack import swarm_rollout
from tfstack.stack.swarm import SwarmError, SwarmUpReport
from tfstack.stack.swarm_probe import TaskModels
from tfstack.stack.swarm_rollout import SwarmRunner, observe_swarm, served_everywhere

MODEL = "half_plus_two"


def test_served_everywhere_is_the_intersection_over_tasks() -> None:
    """A version counts as served only when every task has it AVAILABLE."""
    answers = [
        TaskModels("10.0.0.2", {MODEL: {1: "AVAILABLE", 2: "AVAILABLE"}}),
        TaskModels("10.0.0.3", {MODEL: {1: "AVAILABLE", 2: "LOADING"}}),
    ]
    assert served_everywhere(MODEL, answers, 2) == (1,)


def test_served_everywhere_refuses_missing_or_failing_tasks() -> None:
    """Fewer answers than replicas, or a task that cannot report the model, stop the rollout."""
    one = [TaskModels("10.0.0.2", {MODEL: {1: "AVAILABLE"}})]
    with pytest.raises(RolloutError, match="only 1 of 3 serving tasks answer"):
        served_everywhere(MODEL, one, 3)
    broken = [TaskModels("10.0.0.2", errors={MODEL: "connection refused"})]
    with pytest.raises(RolloutError, match=r"task 10\.0\.0\.2 does not report the model"):
        served_everywhere(MODEL, broken, 1)


class RecordingSwarm:
    """Stands in for ``swarm_up``: records (policy, labels) of the model at each deploy."""

    def __init__(self, spec_path: Path, *, fail_on: int | None = None) -> None:
        self.spec_path = spec_path
        self.deployed: list[tuple[dict[str, Any], dict[str, int]]] = []
        self.fail_on = fail_on

    def __call__(self, spec_path: Path, root: Path, **_: Any) -> SwarmUpReport:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        model = next(m for m in data["models"] if m["name"] == MODEL)
        self.deployed.append((model["policy"], dict(model.get("labels", {}))))
        if self.fail_on is not None and len(self.deployed) == self.fail_on:
            raise SwarmError("not every task serves every declared version after 5 s: v2 LOADING")
        return SwarmUpReport("update", "demo", "tcp://127.0.0.1:23750", tasks=[TaskModels("a")])


class StubbedStageVerify(SwarmRunner):
    """The Swarm runner with stage and verify recorded instead of run."""

    calls: list[str]

    def stage(self, step: Step, journal: Journal, mark_created: Callable[[], None]) -> str:
        self.calls.append("stage")
        return "staged"

    def verify(self, step: Step, journal: Journal) -> str:
        self.calls.append("verify")
        return "verified"

    def sleep(self, seconds: float) -> None:
        self.calls.append(f"sleep {seconds:g}")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    made = Project(tmp_path)
    made.version(MODEL, 1)
    made.version(MODEL, 2)
    made.version("half_plus_three", 1)
    data = valid_spec()
    data["models"][0]["policy"] = {"specific": [1]}
    data["models"][0]["labels"] = {"stable": 1}
    data["deploy"] = {"target": "swarm"}
    made.write(data)
    return made


def _observer(served: tuple[int, ...]) -> Callable[[Context, Any], Observed]:
    def observe(context: Context, spec: Any) -> Observed:
        model = context.model_spec(spec)
        return Observed(
            MODEL, ModelState(model.policy.model_dump(), dict(model.labels)), served, (1, 2)
        )

    return observe


def _runner(context: Context) -> StubbedStageVerify:
    runner = StubbedStageVerify(context)
    runner.calls = []
    return runner


def test_rollout_serves_both_versions_before_moving_the_label(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage, verify, then deploy [1, 2] with stable on 1, then stable -> 2: two model images."""
    swarm = RecordingSwarm(project.spec)
    monkeypatch.setattr(swarm_rollout, "swarm_up", swarm)
    context = Context(project.spec, project.root, MODEL)
    runner = _runner(context)
    outcome = run_rollout(
        context, RolloutRequest(MODEL, version=2), runner=runner, observer=_observer((1,))
    )
    assert runner.calls == ["stage", "verify"]
    assert swarm.deployed == [
        ({"specific": [1, 2]}, {"stable": 1}),
        ({"specific": [1, 2]}, {"stable": 2}),
    ]
    assert outcome.journal.status == "done"
    assert [r.step.name for r in outcome.journal.steps] == ["stage", "verify", "load", "promote"]
    assert "on 1 task (update)" in outcome.journal.steps[2].detail


def test_rollback_moves_the_label_back_and_unloads_in_one_deploy(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rollout to 2, rollback deploys [1] with stable on 1 (one model image)."""
    swarm = RecordingSwarm(project.spec)
    monkeypatch.setattr(swarm_rollout, "swarm_up", swarm)
    context = Context(project.spec, project.root, MODEL)
    run_rollout(
        context, RolloutRequest(MODEL, version=2), runner=_runner(context), observer=_observer((1,))
    )
    swarm.deployed.clear()
    outcome = run_rollback(context, runner=_runner(context), observer=_observer((1, 2)))
    assert swarm.deployed == [({"specific": [1]}, {"stable": 1})]
    assert outcome.journal.action == "rollback"
    assert outcome.summary.startswith("rolled back half_plus_two from version 2 to 1")


def test_a_failed_deploy_restores_the_spec_and_redeploys_it(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load step's deploy fails: the journal says failed and the original is deployed again."""
    original = project.spec.read_text(encoding="utf-8")
    swarm = RecordingSwarm(project.spec, fail_on=1)
    monkeypatch.setattr(swarm_rollout, "swarm_up", swarm)
    context = Context(project.spec, project.root, MODEL)
    with pytest.raises(RolloutError) as raised:
        run_rollout(
            context,
            RolloutRequest(MODEL, version=2),
            runner=_runner(context),
            observer=_observer((1,)),
        )
    assert "the Swarm did not take" in str(raised.value)
    assert "v2 LOADING" in "\n".join(raised.value.evidence)
    assert swarm.deployed[-1] == ({"specific": [1]}, {"stable": 1})
    assert project.spec.read_text(encoding="utf-8") == original
    journal = read_journal(project.root, "demo", MODEL)
    assert journal is not None and journal.status == "failed"


def test_dry_run_plans_without_deploying(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dry-run prints the transitions and calls no deploy."""
    swarm = RecordingSwarm(project.spec)
    monkeypatch.setattr(swarm_rollout, "swarm_up", swarm)
    lines: list[str] = []
    context = Context(project.spec, project.root, MODEL, say=lines.append)
    outcome = run_rollout(
        context,
        RolloutRequest(MODEL, version=2),
        dry_run=True,
        runner=_runner(context),
        observer=_observer((1,)),
    )
    assert outcome.dry_run and swarm.deployed == []
    assert any("label stable -> 2" in line for line in lines)


# --------------------------------------------------------------------------- the Swarm looked up

IMAGE = "tfstack-registry:5000/tfstack/serving-runtime:id-1@sha256:ab"


class FakeSwarmManager:
    """The docker CLI on a manager as the observer uses it: the serving service (its image)."""

    url = "tcp://127.0.0.1:23750"

    def __init__(self, image: str | None = IMAGE) -> None:
        self.image = image
        self.calls: list[tuple[str, ...]] = []

    def check(self) -> None:
        return None

    def run(self, *args: str, check: bool = True, **_: Any) -> str:
        self.calls.append(args)
        if args[:3] == ("service", "inspect", "demo_serving"):
            if self.image is None:
                return "[]"
            template = {"ContainerSpec": {"Image": self.image}}
            return json.dumps([{"Spec": {"Name": "demo_serving", "TaskTemplate": template}}])
        raise AssertionError(f"unexpected command {args}")


def test_observe_asks_every_serving_task_with_the_serving_image(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FakeSwarmManager()
    probed: list[str] = []

    def probe(_: Any, image: str, stack: str, spec: Any) -> tuple[list[TaskModels], None]:
        probed.append(image)
        return [TaskModels("10.0.1.2", {MODEL: {1: "AVAILABLE", 2: "LOADING"}})], None

    monkeypatch.setattr(swarm_rollout, "Manager", lambda url: manager)
    monkeypatch.setattr(swarm_rollout, "probe_tasks", probe)
    context = Context(project.spec, project.root, MODEL)
    spec = context.load_spec(check_disk=False)
    spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"replicas": 1})})
    observed = observe_swarm(context, spec)
    assert probed == [IMAGE] and observed.served == (1,)
    assert manager.calls == [("service", "inspect", "demo_serving")]


def test_observe_refuses_a_stack_that_is_not_deployed(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(swarm_rollout, "Manager", lambda url: FakeSwarmManager(image=None))
    context = Context(project.spec, project.root, MODEL)
    with pytest.raises(
        RolloutError, match=r"stack demo is not deployed on tcp://127\.0\.0\.1:23750"
    ):
        observe_swarm(context, context.load_spec(check_disk=False))
