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
from tfstack.stack.swarm_canary import CachedSwarmDoor
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
    """The docker CLI on a manager as the observer and the traffic steps use it: the serving
    service (its image), the overlay probe's container (which fails to start with an image in
    ``unusable``) and its name lookups."""

    url = "tcp://127.0.0.1:23750"

    def __init__(self, image: str | None = IMAGE) -> None:
        self.image = image
        self.unusable: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.probes_started: list[str] = []

    def check(self) -> None:
        return None

    def run(self, *args: str, check: bool = True, **_: Any) -> str:
        self.calls.append(args)
        if args[:3] == ("service", "inspect", "demo_serving"):
            if self.image is None:
                return "[]"
            template = {"ContainerSpec": {"Image": self.image}}
            return json.dumps([{"Spec": {"Name": "demo_serving", "TaskTemplate": template}}])
        if args[:2] == ("run", "--detach"):
            image = args[args.index("--entrypoint=sleep") + 1]
            if image in self.unusable:
                raise SwarmError("`docker run --detach` failed: network demo_tfstack not found")
            self.probes_started.append(image)
            return "c0ffee"
        if args[:1] == ("exec",) and "resolve" in args:
            return json.dumps({"tasks.demo_canary": ["10.0.1.9"], "tasks.serving": ["10.0.1.2"]})
        if args[:2] == ("rm", "--force"):
            return ""
        raise AssertionError(f"unexpected command {args}")

    def count(self, *prefix: str) -> int:
        return sum(1 for call in self.calls if call[: len(prefix)] == prefix)


class FakeDoor:
    """The door's container: every runtime API line answers."""

    container_id = "d00r"
    name = "the door's container d00r"

    def run(self, argv: Any) -> tuple[int, str]:
        return 0, ""


@pytest.fixture
def canary_project(project: Project) -> Project:
    data = yaml.safe_load(project.spec.read_text(encoding="utf-8"))
    data["models"][0]["slo"] = {"error_rate": 0.01, "window_seconds": 5}
    project.write(data)
    return project


def _journal() -> Journal:
    """A rollout's journal as a traffic step gets it (the step reads nothing from it)."""
    state = ModelState({"specific": [1]}, {"stable": 1})
    return Journal("demo", MODEL, "rollout", 2, state, "", (1,), 1, [])


def _traffic_step(percent: int) -> Step:
    return Step(f"traffic_{percent}", "traffic", f"{percent} %", version=2, percent=percent)


def _wire(
    monkeypatch: pytest.MonkeyPatch, manager: FakeSwarmManager
) -> tuple[list[str], list[dict[str, Any]]]:
    """The runner's manager, door lookup and gates replaced: door lookups and gate calls."""
    lookups: list[str] = []
    gates: list[dict[str, Any]] = []

    def lookup(_: Any, stack: str) -> FakeDoor:
        lookups.append(stack)
        return FakeDoor()

    def gated(door: Any, slo: Any, **kwargs: Any) -> str:
        gates.append({"door": door, **kwargs})
        return f"gates held at {kwargs['percent']} %"

    monkeypatch.setattr(swarm_rollout, "Manager", lambda url: manager)
    monkeypatch.setattr(
        swarm_rollout, "CachedSwarmDoor", lambda m, stack: CachedSwarmDoor(m, stack, lookup)
    )
    monkeypatch.setattr(swarm_rollout, "gated_traffic_step", gated)
    return lookups, gates


def test_traffic_steps_look_the_door_and_the_serving_service_up_once_per_process(
    canary_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two traffic steps in one process: one door lookup, one ``service inspect``; a fresh probe
    container per step (started, then removed)."""
    manager = FakeSwarmManager()
    lookups, gates = _wire(monkeypatch, manager)
    runner = SwarmRunner(Context(canary_project.spec, canary_project.root, MODEL))
    journal = _journal()
    assert runner.traffic(_traffic_step(25), journal) == "gates held at 25 %"
    assert runner.traffic(_traffic_step(100), journal) == "gates held at 100 %"
    assert lookups == ["demo"]
    assert manager.count("service", "inspect", "demo_serving") == 1
    assert manager.probes_started == [IMAGE, IMAGE]
    assert manager.count("rm", "--force", "demo-metrics-probe") == 4  # before and after each
    assert gates[0]["door"] is gates[1]["door"]
    assert gates[1]["candidate_urls"] == ["http://10.0.1.9:8501/monitoring/prometheus/metrics"]
    # A new process (`--resume`) looks both up again: nothing came from the journal.
    SwarmRunner(Context(canary_project.spec, canary_project.root, MODEL)).traffic(
        _traffic_step(100), journal
    )
    assert lookups == ["demo", "demo"]
    assert manager.count("service", "inspect", "demo_serving") == 2


def test_a_probe_that_does_not_start_with_the_cached_image_looks_the_service_up_again(
    canary_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving service was updated between steps (its old image unusable): the second step
    looks it up again and starts its probe with the new image."""
    manager = FakeSwarmManager()
    _wire(monkeypatch, manager)
    runner = SwarmRunner(Context(canary_project.spec, canary_project.root, MODEL))
    journal = _journal()
    runner.traffic(_traffic_step(25), journal)
    manager.unusable.add(IMAGE)
    manager.image = IMAGE.replace("id-1", "id-2")
    runner.traffic(_traffic_step(100), journal)
    assert manager.probes_started == [IMAGE, manager.image]
    assert manager.count("service", "inspect", "demo_serving") == 2


def test_a_probe_that_does_not_start_with_the_current_image_fails_the_step(
    canary_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FakeSwarmManager()
    manager.unusable.add(IMAGE)
    _wire(monkeypatch, manager)
    runner = SwarmRunner(Context(canary_project.spec, canary_project.root, MODEL))
    with pytest.raises(SwarmError, match="network demo_tfstack not found"):
        runner.traffic(_traffic_step(25), _journal())
    assert manager.count("run", "--detach") == 1


def test_a_stack_removed_under_a_traffic_step_is_named(
    canary_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = FakeSwarmManager()
    _wire(monkeypatch, manager)
    runner = SwarmRunner(Context(canary_project.spec, canary_project.root, MODEL))
    journal = _journal()
    runner.traffic(_traffic_step(25), journal)
    manager.unusable.add(IMAGE)
    manager.image = None
    with pytest.raises(RolloutError, match="stack demo has no serving service"):
        runner.traffic(_traffic_step(100), journal)


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
