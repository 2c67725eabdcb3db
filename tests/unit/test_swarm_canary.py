"""The Swarm's weighted canary, pure parts: the canary service cloned from the serving service,
the overlay probe's answers, and what the stack's door and ``down`` do about it (no Docker)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.unit.specfixtures import valid_spec
from tfstack.core.labels import LABEL_MODEL, LABEL_PROJECT, LABEL_ROLE
from tfstack.errors import RolloutError, StackError
from tfstack.rollout.canary import CONTAINER_CANARY_CONFIG, LABEL_CANARY_VERSION, ROLE_CANARY
from tfstack.spec import StackSpec
from tfstack.stack.swarm import (
    LABEL_BESIDE_STACK,
    STACK_LABEL,
    NodeInfo,
    SwarmStatus,
    remove_beside_stack,
)
from tfstack.stack.swarm_canary import (
    CachedSwarmDoor,
    canary_config_name,
    parse_fetch,
    plan_canary_service,
    scrapes_from,
    warm_canary,
)

METRICS = """# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 40
:tensorflow:serving:request_count{model_name="half_plus_two",status="INVALID_ARGUMENT"} 2
"""

SERVING: dict[str, Any] = {
    "ID": "k3y",
    "Spec": {
        "Name": "demo_serving",
        "Labels": {STACK_LABEL: "demo", LABEL_PROJECT: "demo"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "tfstack-registry:5000/tfstack/serving-runtime:id-1@sha256:ab",
                "Labels": {STACK_LABEL: "demo", LABEL_PROJECT: "demo"},
                "Command": ["sh", "-c", "until ...; exec tensorflow_model_server", "x"],
                "Args": [
                    "--rest_api_port=8501",
                    "--model_config_file=/models/.tfstack/models.config",
                    "--model_config_file_poll_wait_seconds=2",
                ],
                "User": "65532:65532",
                "Healthcheck": {
                    "Test": [
                        "CMD",
                        "tfstack-probe",
                        "--rest-port=8501",
                        "--model-config=/models/.tfstack/models.config",
                    ],
                    "Interval": 2_000_000_000,
                },
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "demo_models",
                        "Target": "/models",
                        "ReadOnly": True,
                    }
                ],
                "Configs": [
                    {
                        "File": {"Name": "/config/monitoring.config", "Mode": 292},
                        "ConfigID": "m1",
                        "ConfigName": "demo-monitoring-1",
                    }
                ],
                "Isolation": "default",
            },
            "Resources": {"Limits": {"NanoCPUs": 1_000_000_000}},
            "RestartPolicy": {"Condition": "any", "Delay": 2_000_000_000},
            "Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}]},
            "Networks": [{"Target": "net1", "Aliases": ["serving"]}],
            "ForceUpdate": 0,
            "Runtime": "container",
        },
        "Mode": {"Replicated": {"Replicas": 3}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback"},
        "RollbackConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr"},
    },
}


def _plan(serving: dict[str, Any] = SERVING) -> Any:
    return plan_canary_service(
        serving,
        stack="demo",
        project="demo",
        model="half_plus_two",
        version=3,
        config_id="c9",
        config_name="demo-canary-config-abc",
    )


def test_the_canary_service_is_the_serving_service_with_its_own_config_and_one_replica() -> None:
    plan = _plan()
    container = plan.task_template["ContainerSpec"]
    assert plan.name == "demo_canary"
    assert plan.mode == {"Replicated": {"Replicas": 1}}
    assert plan.endpoint_spec == {"Mode": "dnsrr"}
    # What makes a serving task stays.
    assert container["Image"] == SERVING["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert container["User"] == "65532:65532"
    assert container["Mounts"][0]["Source"] == "demo_models"
    assert plan.task_template["Resources"] == {"Limits": {"NanoCPUs": 1_000_000_000}}
    assert plan.update_config is not None and plan.update_config["Order"] == "start-first"
    # Its models.config is the canary's, for the server and for the health probe.
    assert f"--model_config_file={CONTAINER_CANARY_CONFIG}" in container["Args"]
    assert "--model_config_file=/models/.tfstack/models.config" not in container["Args"]
    assert "--rest_api_port=8501" in container["Args"]
    assert container["Healthcheck"]["Test"][-1] == f"--model-config={CONTAINER_CANARY_CONFIG}"
    mounted = {c["File"]["Name"]: c["ConfigName"] for c in container["Configs"]}
    assert mounted == {
        "/config/monitoring.config": "demo-monitoring-1",
        CONTAINER_CANARY_CONFIG: "demo-canary-config-abc",
    }


def test_the_canary_is_outside_the_stack_and_out_of_tasks_serving() -> None:
    """No stack namespace (``stack deploy --prune`` would remove it) and no `serving` alias (the
    door would count it as a stable replica)."""
    plan = _plan()
    assert STACK_LABEL not in plan.labels
    assert STACK_LABEL not in plan.task_template["ContainerSpec"]["Labels"]
    assert plan.labels[LABEL_BESIDE_STACK] == "demo"
    assert plan.labels[LABEL_ROLE] == ROLE_CANARY
    assert plan.labels[LABEL_MODEL] == "half_plus_two"
    assert plan.labels[LABEL_CANARY_VERSION] == "3"
    assert plan.task_template["Networks"] == [{"Target": "net1"}]
    assert "ForceUpdate" not in plan.task_template


def test_planning_leaves_the_inspected_service_alone() -> None:
    before = copy.deepcopy(SERVING)
    _plan()
    assert before == SERVING


def test_a_service_without_a_container_or_network_is_refused_with_the_step() -> None:
    no_container = copy.deepcopy(SERVING)
    del no_container["Spec"]["TaskTemplate"]["ContainerSpec"]
    with pytest.raises(RolloutError, match="no container spec") as caught:
        _plan(no_container)
    assert "canary_start" in str(caught.value) and "up --target swarm" in str(caught.value)
    no_network = copy.deepcopy(SERVING)
    no_network["Spec"]["TaskTemplate"]["Networks"] = []
    with pytest.raises(RolloutError, match="on no network"):
        _plan(no_network)


def test_a_missing_config_flag_is_added() -> None:
    bare = copy.deepcopy(SERVING)
    bare["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] = ["--rest_api_port=8501"]
    args = _plan(bare).task_template["ContainerSpec"]["Args"]
    assert args == ["--rest_api_port=8501", f"--model_config_file={CONTAINER_CANARY_CONFIG}"]


def test_the_canary_config_name_is_versioned_by_content() -> None:
    first = canary_config_name("demo", "model_config_list {}")
    assert first == canary_config_name("demo", "model_config_list {}")
    assert first != canary_config_name("demo", "model_config_list { }")
    assert first.startswith("demo-canary-config-")


def test_probe_pages_become_scrapes_in_url_order() -> None:
    urls = ["http://10.0.1.5:8501/metrics", "http://10.0.1.6:8501/metrics"]
    document = parse_fetch(
        "some warning\n" + json.dumps({u: {"status": 200, "text": METRICS} for u in reversed(urls)})
    )
    scrapes = scrapes_from(document, urls, at=12.5)
    assert [s.target for s in scrapes] == urls
    assert all(s.at == 12.5 for s in scrapes)
    counters = scrapes[0].models["half_plus_two"]
    assert (counters.requests, counters.errors) == (42, 2)


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ({"error": "timed out"}, "cannot read metrics from http://t/m on the overlay: timed out"),
        ({"status": 404, "text": ""}, "answered HTTP 404"),
        (None, "no answer"),
    ],
)
def test_a_page_not_read_names_its_url(page: dict[str, Any] | None, message: str) -> None:
    document = {} if page is None else {"http://t/m": page}
    with pytest.raises(StackError, match=message.replace("/", "/")):
        scrapes_from(document, ["http://t/m"], at=0.0)


def test_a_probe_without_json_says_what_it_printed() -> None:
    with pytest.raises(StackError, match="no JSON: python3: not found"):
        parse_fetch("python3: not found")


class FakeManager:
    """The docker CLI on a manager, as ``remove_beside_stack`` uses it."""

    url = "tcp://127.0.0.1:23750"

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.tasks_running = 2
        self.config_in_use = 1

    def run(self, *args: str, check: bool = True, **_: Any) -> str:
        self.calls.append(args)
        if args[:2] == ("service", "ls"):
            return "demo_canary"
        if args[:2] == ("service", "ps"):
            self.tasks_running -= 1
            return "Running 3 seconds ago" if self.tasks_running > 0 else "Shutdown 1 second ago"
        if args[:2] == ("config", "ls"):
            return "demo-canary-config-abc"
        if args[:2] == ("config", "rm"):
            self.config_in_use -= 1
            return "" if self.config_in_use >= 0 else args[2]
        return ""


def test_removing_the_canary_drains_its_tasks_before_the_service_and_config_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tfstack.stack.swarm.time.sleep", lambda _: None)
    manager = FakeManager()
    removed = remove_beside_stack(manager, "demo", role=ROLE_CANARY)  # type: ignore[arg-type]
    assert removed == ["service demo_canary", "config demo-canary-config-abc"]
    verbs: Sequence[tuple[str, ...]] = [c[:2] for c in manager.calls]
    assert verbs.index(("service", "scale")) < verbs.index(("service", "rm"))
    assert verbs.index(("service", "rm")) < verbs.index(("config", "rm"))
    # Only what tfstack made beside this stack, with this role.
    listed = next(c for c in manager.calls if c[:2] == ("service", "ls"))
    assert f"label={LABEL_BESIDE_STACK}=demo" in listed
    assert f"label={LABEL_ROLE}={ROLE_CANARY}" in listed


def test_status_shows_the_canary_and_its_share() -> None:
    """`status --target swarm` while `rollout --traffic` runs: the canary service, its model,
    version and task, and the share the journal says the door sends it (also in --json)."""
    status = SwarmStatus(
        stack="demo",
        manager="tcp://127.0.0.1:23750",
        endpoint_mode="dnsrr",
        nodes=[NodeInfo("n1", "tfstack-node-1", "manager", "ready", "active")],
        tasks=[],
        services={},
        per_task=[],
        probe_error=None,
        door="http://127.0.0.1:8501",
        door_ok=True,
        expected={},
        canary={
            "service": "demo_canary",
            "model": "half_plus_two",
            "version": "3",
            "tasks": [{"node": "tfstack-node-2", "state": "Running"}],
        },
        rollout={
            "half_plus_two": {
                "state": "running",
                "step": "traffic_25",
                "traffic": {"version": 3, "percent": 25},
            }
        },
    )
    lines = status.describe()
    assert "canary demo_canary: half_plus_two version 3 (tasks: tfstack-node-2 Running)" in lines
    assert "rollout of half_plus_two: running at traffic_25, 25 % of unversioned requests" in lines
    document = status.to_json()
    assert document["canary"]["version"] == "3"
    assert document["rollout"]["half_plus_two"]["traffic"]["percent"] == 25


class FakeProbe:
    """The overlay probe as warm_canary uses it: POSTs answered with the given statuses."""

    stack = "demo"

    def __init__(self, statuses: list[Any]) -> None:
        self.statuses = statuses
        self.posts: list[tuple[str, dict[str, Any], int]] = []

    def post(self, url: str, body: dict[str, Any], rounds: int) -> list[Any]:
        self.posts.append((url, body, rounds))
        return self.statuses


def _spec_with_samples(tmp_path: Path) -> tuple[StackSpec, Path]:
    data = valid_spec()
    model = data["models"][0]
    model["samples"] = [
        {"name": "predict", "body": {"instances": [1.0]}},
        {"name": "cls", "method": "classify", "signature_name": "c", "body": {"examples": []}},
    ]
    return StackSpec.model_validate(data), tmp_path / "config" / "stack.yaml"


def test_the_canary_is_warmed_with_its_models_samples_at_its_version(tmp_path: Path) -> None:
    spec, spec_path = _spec_with_samples(tmp_path)
    model = spec.models[0].name
    probe = FakeProbe([200, 200, 200])
    sent = warm_canary(probe, spec, spec_path, "10.0.1.9", model=model, version=3, rounds=3)  # type: ignore[arg-type]
    assert sent == 6
    port = spec.serving.rest_port
    assert [(url, rounds) for url, _, rounds in probe.posts] == [
        (f"http://10.0.1.9:{port}/v1/models/{model}/versions/3:predict", 3),
        (f"http://10.0.1.9:{port}/v1/models/{model}/versions/3:classify", 3),
    ]
    assert probe.posts[1][1] == {"examples": [], "signature_name": "c"}


def test_a_canary_that_fails_its_samples_stops_the_rollout_before_traffic(tmp_path: Path) -> None:
    spec, spec_path = _spec_with_samples(tmp_path)
    probe = FakeProbe([200, "500", 200])
    with pytest.raises(
        RolloutError, match=r"does not answer sample 'predict': \[200, '500', 200\]"
    ):
        warm_canary(
            probe, spec, spec_path, "10.0.1.9", model=spec.models[0].name, version=3, rounds=3
        )  # type: ignore[arg-type]


class FakeDoorContainer:
    """One door container as ``docker exec`` reaches it: every command exits with ``exit_code``."""

    def __init__(self, container_id: str, exit_code: int = 0) -> None:
        self.container_id = container_id
        self.exit_code = exit_code
        self.commands: list[Sequence[str]] = []

    @property
    def name(self) -> str:
        return f"the door's container {self.container_id}"

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(argv)
        if self.exit_code:
            return self.exit_code, f"Error: No such container: {self.container_id}"
        return 0, f"answered in {self.container_id}"


class DoorLookups:
    """Stands in for ``swarm_door``: each lookup answers the next container (or raises)."""

    def __init__(self, *answers: FakeDoorContainer | StackError) -> None:
        self.answers = list(answers)
        self.count = 0

    def __call__(self, manager: Any, stack: str) -> FakeDoorContainer:
        self.count += 1
        answer = self.answers.pop(0)
        if isinstance(answer, StackError):
            raise answer
        return answer


def test_the_door_is_looked_up_once_for_every_command_while_it_answers() -> None:
    door = FakeDoorContainer("c1")
    lookups = DoorLookups(door)
    cached = CachedSwarmDoor(FakeManager(), "demo", lookups)  # type: ignore[arg-type]
    for _ in range(3):
        assert cached.run(["show", "stat"]) == (0, "answered in c1")
    assert lookups.count == 1 and len(door.commands) == 3
    assert cached.name == "the door's container c1"


def test_a_rescheduled_door_is_looked_up_again_and_the_command_runs_in_the_new_one() -> None:
    """The cached container is gone (its task was rescheduled): one lookup, the same command in
    the new container, which is kept for the next commands."""
    gone, new = FakeDoorContainer("c1", exit_code=1), FakeDoorContainer("c2")
    lookups = DoorLookups(gone, new)
    cached = CachedSwarmDoor(FakeManager(), "demo", lookups)  # type: ignore[arg-type]
    assert cached.run(["set", "map"]) == (0, "answered in c2")
    assert gone.commands == [["set", "map"]] and new.commands == [["set", "map"]]
    assert cached.run(["show", "stat"]) == (0, "answered in c2")
    assert lookups.count == 2


def test_a_command_failing_in_the_doors_own_container_is_not_run_again() -> None:
    door = FakeDoorContainer("c1", exit_code=2)
    lookups = DoorLookups(door, door)
    cached = CachedSwarmDoor(FakeManager(), "demo", lookups)  # type: ignore[arg-type]
    code, output = cached.run(["set", "map"])
    assert code == 2 and "c1" in output
    assert len(door.commands) == 1 and lookups.count == 2


def test_a_door_gone_altogether_says_so() -> None:
    lookups = DoorLookups(
        FakeDoorContainer("c1", exit_code=1),
        StackError("the stack's front door has no running task", service="demo_frontend"),
    )
    cached = CachedSwarmDoor(FakeManager(), "demo", lookups)  # type: ignore[arg-type]
    with pytest.raises(StackError, match="no running task"):
        cached.run(["set", "map"])
