"""The status model: joining spec and observations, the stable --json schema, the rich table."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests
from rich.console import Console

from tfstack.core.modelstatus import VersionState
from tfstack.docker.compose import ContainerInfo, LastExit, container_info, last_deaths
from tfstack.rollout.journal import (
    Journal,
    ModelState,
    Step,
    StepRecord,
    status_summary,
    write_journal,
)
from tfstack.serving.client import ModelRef, ServingRequestError
from tfstack.serving.door import DoorStatus, parse_stats_csv
from tfstack.serving.waiting import ModelExpectation, ModelObservation
from tfstack.stack.status import (
    SCHEMA_VERSION,
    StartFailure,
    model_status,
    observe,
    render_table,
    service_status,
    with_start_failures,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "status-json.md"


def container(**changes: Any) -> ContainerInfo:
    base: dict[str, Any] = dict(
        id="c" * 64,
        name="demo-serving-1",
        service="serving",
        state="running",
        health="healthy",
        exit_code=None,
        started_at="2026-01-01T00:00:00Z",
        image_id="sha256:abc",
        config_hash="h",
        ports={"18501/tcp": [("127.0.0.1", "18501")], "18500/tcp": [("127.0.0.1", "18500")]},
    )
    base.update(changes)
    return ContainerInfo(**base)


class FakeRest:
    base_url = "http://127.0.0.1:18501"

    def __init__(self, answers: dict[tuple[str, str | None], Any]) -> None:
        self.answers = answers

    def model_status(self, ref: ModelRef, timeout: float | None = None) -> list[VersionState]:
        answer = self.answers[(ref.name, ref.label)]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


EXPECT = [
    ModelExpectation("half_plus_two", (1, 2), {"stable": 1, "canary": 2}),
    ModelExpectation("broken", (1,)),
]


def sample_status() -> Any:

    rest = FakeRest(
        {
            ("half_plus_two", None): [VersionState(1, "AVAILABLE"), VersionState(2, "AVAILABLE")],
            ("half_plus_two", "stable"): [VersionState(1, "AVAILABLE")],
            ("half_plus_two", "canary"): ServingRequestError("unknown label", status=400),
            ("broken", None): [VersionState(1, "END", "DATA_LOSS", "corrupt saved_model.pb")],
        }
    )
    return observe(
        project="demo",
        spec_path="config/stack.yaml",
        rest=rest,  # type: ignore[arg-type]
        expectations=EXPECT,
        containers=[container()],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )


def test_status_json_has_exactly_the_documented_fields() -> None:
    """--json keys match docs/status-json.md (a stable contract other tools read)."""
    document = sample_status().to_json()
    assert document["schema_version"] == SCHEMA_VERSION == 1
    doc = DOC.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))  # type: ignore[union-attr]
    assert set(document) == set(example)
    assert set(document["services"][0]) == set(example["services"][0])
    assert set(document["models"][0]) == set(example["models"][0])
    assert set(document["models"][0]["versions"][0]) == set(example["models"][0]["versions"][0])
    for key in document:
        assert f"`{key}`" in doc, f"top-level field {key} is not documented"
    for key in document["services"][0]:
        assert f"`{key}`" in doc, f"services[] field {key} is not documented"
    json.dumps(document)  # serialisable as is


def test_status_json_frontend_has_exactly_the_documented_fields() -> None:
    """The `frontend` object (the door's view) matches docs/status-json.md's example and table."""
    document = dataclasses.replace(sample_status(), frontend=door_status()).to_json()
    doc = DOC.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))  # type: ignore[union-attr]
    assert set(document["frontend"]) == set(example["frontend"])
    assert set(document["frontend"]["servers"][0]) == set(example["frontend"]["servers"][0])
    assert set(document["frontend"]["in_rotation"]) == set(example["frontend"]["in_rotation"])
    for key in document["frontend"]:
        assert f"`frontend.{key}`" in doc, f"frontend field {key} is not documented"
    for key in document["frontend"]["servers"][0]:
        assert re.search(rf"`servers\[\]\.{key}`", doc), f"servers[] field {key} undocumented"
    assert sample_status().to_json()["frontend"] is None, "no door: null"
    json.dumps(document)


# Captured from a replicas: 2 stack's door after 40 gRPC and 45 REST predicts.
STATS_CSV = (Path(__file__).parent / "data" / "haproxy-stats.csv").read_text()
STATS_NAMES = {"172.31.0.2": "demo-serving-1", "172.31.0.3": "demo-serving-2"}


def door_status(**row: str) -> DoorStatus:
    """The door's status from the captured CSV, grpc replica2's row changed by ``row``."""
    header, body = STATS_CSV.split("\n", 1)
    columns = header.lstrip("# ").split(",")
    lines = []
    for line in body.splitlines():
        cells = line.split(",")
        if cells[:2] == ["grpc_replicas", "replica2"]:
            for key, value in row.items():
                cells[columns.index(key)] = value
        lines.append(",".join(cells))
    text = header + "\n" + "\n".join(lines) + "\n"
    return DoorStatus("demo-frontend-1", "running", tuple(parse_stats_csv(text, STATS_NAMES)))


def interrupted_journal() -> Any:

    state = ModelState({"specific": [1]}, {"stable": 1})
    return Journal(
        project="demo",
        model="half_plus_two",
        action="rollout",
        version=2,
        original=state,
        original_spec_text="",
        original_served=(1,),
        previous_stable=1,
        steps=[
            StepRecord(Step("stage", "stage", "copy"), "done"),
            StepRecord(Step("verify", "verify", "side instance"), "running"),
        ],
        pid=2**22 + 12345,  # no such process: the journal reads as interrupted
    )


def test_rollout_entries_have_exactly_the_documented_fields() -> None:
    """`rollout` in --json: journal summary keys match docs/status-json.md (example and table)."""

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_journal(root, interrupted_journal())
        summary = status_summary(root, "demo")
    assert summary is not None
    entry = summary["half_plus_two"]
    assert entry["state"] == "interrupted" and entry["step"] == "verify"
    assert entry["next"] == "invoke rollout --model half_plus_two --resume (or --abort)"
    doc = DOC.read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, re.S)
    documented = json.loads(blocks[1])
    assert set(documented) == {"half_plus_two"}
    assert set(entry) == set(documented["half_plus_two"])
    for key in entry:
        assert f"`{key}`" in doc, f"rollout field {key} is not documented"
    status = observe(
        project="demo",
        spec_path="s",
        rest=FakeRest({}),  # type: ignore[arg-type]
        expectations=[],
        containers=[],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
        rollout=summary,
    )
    assert status.to_json()["rollout"] == summary
    json.dumps(status.to_json())


def test_status_reports_versions_labels_and_errors() -> None:
    """Per version: state, labels, error; per label: declared vs serving; verdicts follow."""
    status = sample_status()
    document = status.to_json()
    two, broken = document["models"]
    assert two["versions"] == [
        {"version": 1, "state": "AVAILABLE", "labels": ["stable"], "declared": True, "error": None},
        {"version": 2, "state": "AVAILABLE", "labels": [], "declared": True, "error": None},
    ]
    assert two["labels"] == {
        "canary": {"declared": 2, "serving": None},
        "stable": {"declared": 1, "serving": 1},
    }
    assert not two["ok"], "canary does not resolve yet"
    assert broken["versions"][0]["error"] == {
        "code": "DATA_LOSS",
        "message": "corrupt saved_model.pb",
    }
    assert not broken["ok"]
    assert document["ok"] is False
    assert document["services"][0]["endpoints"] == {
        "rest": "http://127.0.0.1:18501",
        "grpc": "127.0.0.1:18500",
    }


def test_status_without_a_running_container_does_not_ask_the_server() -> None:
    """With no running container, models say so and the server is never contacted."""

    class Exploding(FakeRest):
        def model_status(self, ref: ModelRef, timeout: float | None = None) -> list[VersionState]:
            raise AssertionError("must not be called")

    status = observe(
        project="demo",
        spec_path="s",
        rest=Exploding({}),  # type: ignore[arg-type]
        expectations=EXPECT,
        containers=[container(state="exited", exit_code=1, health=None)],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )
    document = status.to_json()
    assert document["server_error"] == "no serving container is running"
    assert document["models"][0]["error"] == "no serving container is running"
    assert document["services"][0]["exit_code"] == 1
    assert not status.ok


def test_status_when_the_rest_port_does_not_answer() -> None:
    """A running container whose REST API refuses connections is a server_error, not a crash."""
    rest = FakeRest({("half_plus_two", None): requests.ConnectionError("refused")})
    status = observe(
        project="demo",
        spec_path="s",
        rest=rest,  # type: ignore[arg-type]
        expectations=EXPECT[:1],
        containers=[container()],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )
    assert status.server_error is not None and "does not answer" in status.server_error
    assert not status.ok


def test_ok_stack_and_starting_health() -> None:
    """Every model ready with the container running is OK, even while health is still starting."""
    rest = FakeRest({("m", None): [VersionState(3, "AVAILABLE")]})
    status = observe(
        project="demo",
        spec_path="s",
        rest=rest,  # type: ignore[arg-type]
        expectations=[ModelExpectation("m", (3,))],
        containers=[container(health="starting")],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )
    assert status.ok
    unhealthy = service_status(container(health="unhealthy"), host="h", rest_port=1, grpc_port=2)
    assert not unhealthy.ok


def test_model_status_marks_undeclared_versions() -> None:
    """A version the server holds but the spec no longer serves is flagged undeclared."""
    status = model_status(
        ModelExpectation("m", (2,)),
        ModelObservation("m", (VersionState(1, "UNLOADING"), VersionState(2, "AVAILABLE"))),
    )
    assert [(v.version, v.declared) for v in status.versions] == [(1, False), (2, True)]
    assert status.ok


def test_render_table_shows_states_errors_and_endpoints() -> None:
    """The table people read names each version's state, labels and load error."""
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None).print(render_table(sample_status()))
    text = buffer.getvalue()
    assert re.search(r"half_plus_two\s+│ v1\s+│ AVAILABLE\s+│ stable", text)
    assert "DATA_LOSS: corrupt saved_model.pb" in text
    assert "label canary" in text and "PENDING" in text
    assert "rest http://127.0.0.1:18501" in text
    assert "stack NOT OK" in text


def test_each_replica_is_its_own_service_entry_with_its_own_verdict() -> None:
    """With replicas, every container is listed with its own published ports and is asked on its
    own REST port; a replica lacking a model makes its entry and the stack not ok."""
    one = container(
        id="a" * 64,
        name="demo-serving-1",
        labels={"com.docker.compose.container-number": "1"},
        ports={"18501/tcp": [("127.0.0.1", "18502")], "18500/tcp": [("127.0.0.1", "18500")]},
    )
    two = container(
        id="b" * 64,
        name="demo-serving-2",
        labels={"com.docker.compose.container-number": "2"},
        ports={"18501/tcp": [("0.0.0.0", "18501")], "18500/tcp": [("0.0.0.0", "18499")]},
    )
    main = FakeRest({("m", None): [VersionState(1, "AVAILABLE")]})
    per_replica = {
        "http://127.0.0.1:18502": FakeRest({("m", None): [VersionState(1, "AVAILABLE")]}),
        "http://127.0.0.1:18501": FakeRest({("m", None): [VersionState(1, "LOADING")]}),
    }
    asked: list[str] = []

    class Closing(FakeRest):
        def close(self) -> None:
            pass

    def rest_for(url: str) -> Any:
        asked.append(url)
        client = Closing(per_replica[url].answers)
        return client

    status = observe(
        project="demo",
        spec_path="s",
        rest=main,  # type: ignore[arg-type]
        expectations=[ModelExpectation("m", (1,))],
        containers=[one, two],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
        rest_for=rest_for,
    )
    document = status.to_json()
    assert sorted(asked) == ["http://127.0.0.1:18501", "http://127.0.0.1:18502"]
    first, second = document["services"]
    assert (first["replica"], first["models_ok"], first["problems"]) == (1, True, [])
    assert first["endpoints"] == {"rest": "http://127.0.0.1:18502", "grpc": "127.0.0.1:18500"}
    assert second["replica"] == 2 and second["models_ok"] is False
    assert second["problems"] == ["m: version 1 LOADING"]
    assert second["endpoints"] == {"rest": "http://127.0.0.1:18501", "grpc": "127.0.0.1:18499"}
    assert document["models"][0]["ok"], "models[] describes the spec's port"
    assert not status.ok
    buffer = io.StringIO()
    Console(file=buffer, width=220, color_system=None).print(render_table(status))
    text = buffer.getvalue()
    assert "serving #1" in text and "all ready" in text
    assert "serving #2" in text and "m: version 1 LOADING" in text


def test_a_single_replica_verdict_comes_from_the_same_observation() -> None:
    """With one running container its models_ok/problems follow the models observed (no second
    round of requests)."""
    rest = FakeRest({("m", None): [VersionState(1, "END", "DATA_LOSS", "bad pb")]})
    status = observe(
        project="demo",
        spec_path="s",
        rest=rest,  # type: ignore[arg-type]
        expectations=[ModelExpectation("m", (1,))],
        containers=[container()],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
        rest_for=lambda url: pytest.fail("a single replica is not asked twice"),
    )
    (service,) = status.to_json()["services"]
    assert service["models_ok"] is False
    assert service["problems"] == ["m v1: bad pb"]


def test_recorded_start_failures_show_as_end_with_their_error() -> None:
    """A model left out of a degraded start (the server does not know it) shows its recorded
    version as END with the error; the stack is not ok; models the server knows are untouched."""

    rest = FakeRest(
        {
            ("good", None): [VersionState(1, "AVAILABLE")],
            ("broken", None): ServingRequestError(
                "Could not find any versions of model broken", status=404
            ),
        }
    )
    status = observe(
        project="demo",
        spec_path="s",
        rest=rest,  # type: ignore[arg-type]
        expectations=[ModelExpectation("good", (1,)), ModelExpectation("broken", (1,))],
        containers=[container()],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )
    failures = [
        StartFailure("broken", 1, "DATA_LOSS: Can't parse saved_model.pb"),
        StartFailure("good", 1, "stale record"),
    ]
    document = with_start_failures(status, failures).to_json()
    good, broken = document["models"]
    assert good["ok"] and good["versions"][0]["state"] == "AVAILABLE"
    assert broken["error"] is None and not broken["ok"]
    assert broken["versions"] == [
        {
            "version": 1,
            "state": "END",
            "labels": [],
            "declared": True,
            "error": {"code": "DATA_LOSS", "message": "Can't parse saved_model.pb"},
        }
    ]
    assert document["ok"] is False
    assert StartFailure("m", 1, "something odd").code == "UNKNOWN"


def test_restarts_and_last_exit_reach_json_and_table() -> None:
    """A container the restart policy brought back shows its restart count and why it died."""
    from_engine = container_info_of(
        {
            "Id": "d" * 64,
            "Name": "/demo-serving-1",
            "RestartCount": 2,
            "State": {
                "Status": "running",
                "ExitCode": 137,
                "OOMKilled": True,
                "FinishedAt": "2026-01-01T00:05:00.123Z",
                "StartedAt": "2026-01-01T00:05:01Z",
            },
            "Config": {"Labels": {"com.docker.compose.service": "serving"}},
        }
    )
    service = service_status(from_engine, host="127.0.0.1", rest_port=18501, grpc_port=18500)
    document = service.to_json()
    assert document["restart_count"] == 2
    assert document["last_exit"] == {
        "code": 137,
        "oom_killed": True,
        "finished_at": "2026-01-01T00:05:00.123Z",
        "reason": "OOM killed",
    }
    status = dataclasses.replace(sample_status(), services=(service,))
    buffer = io.StringIO()
    Console(file=buffer, width=220, color_system=None).print(render_table(status))
    assert "2 (last: OOM killed at 2026-01-01T00:05:00)" in buffer.getvalue()


def test_a_container_that_never_stopped_has_no_last_exit() -> None:
    """The engine's zero FinishedAt means no previous run: last_exit is null, restarts 0."""
    fresh = container_info_of(
        {"State": {"Status": "running", "ExitCode": 0, "FinishedAt": "0001-01-01T00:00:00Z"}}
    )
    assert (fresh.restart_count, fresh.last_exit) == (0, None)
    killed = LastExit(code=137, oom_killed=False, finished_at="t")
    assert killed.reason == "killed by SIGKILL"
    assert LastExit(code=3, oom_killed=False, finished_at="t").reason == "exit 3"


def container_info_of(attrs: dict[str, Any]) -> ContainerInfo:
    class Sdk:
        id = attrs.get("Id", "x")

    Sdk.attrs = attrs  # type: ignore[attr-defined]
    return container_info(Sdk())


def test_a_restarted_container_gets_its_last_exit_from_die_events() -> None:
    """Running again, inspect says exit 0; the engine's die/oom events give the real end."""

    class Engine:
        def events(self, **kwargs: Any) -> list[dict[str, Any]]:
            assert kwargs["filters"]["event"] == ["die", "oom"]
            return [
                {
                    "id": "a",
                    "Action": "die",
                    "timeNano": 1_700_000_000 * 10**9,
                    "Actor": {"Attributes": {"exitCode": "1"}},
                },
                {"id": "a", "Action": "oom", "timeNano": 1_700_000_100 * 10**9},
                {
                    "id": "a",
                    "Action": "die",
                    "timeNano": 1_700_000_100 * 10**9,
                    "Actor": {"Attributes": {"exitCode": "137"}},
                },
            ]

    deaths = last_deaths(Engine(), ["a", "b"])
    assert set(deaths) == {"a"}
    assert (deaths["a"].code, deaths["a"].oom_killed) == (137, True)
    assert deaths["a"].reason == "OOM killed"
    assert deaths["a"].finished_at == "2023-11-14T22:15:00Z"


def door_text(status: Any) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=220, color_system=None).print(render_table(status))
    return buffer.getvalue()


def test_status_shows_the_door_replicas_in_rotation_with_requests_and_errors() -> None:
    """status: a door table row per backend and replica (status, check, requests, errors)."""
    base = sample_status()
    status = dataclasses.replace(base, frontend=door_status())
    document = status.to_json()["frontend"]
    assert document["ok"] is True
    assert document["in_rotation"] == {
        "rest": ["demo-serving-1", "demo-serving-2"],
        "grpc": ["demo-serving-1", "demo-serving-2"],
    }
    assert [(s["backend"], s["container"], s["requests"]) for s in document["servers"]] == [
        ("rest", "demo-serving-1", 23),
        ("rest", "demo-serving-2", 22),
        ("grpc", "demo-serving-1", 40),
        ("grpc", "demo-serving-2", 40),
    ]
    text = door_text(status)
    assert "front door demo-frontend-1 (running): in rotation REST 2, gRPC 2" in text
    assert re.search(r"rest\s+│ replica2\s+│ demo-serving-2\s+│ UP\s+│ L7OK\s+│ 22\s+│ 0", text)
    assert re.search(r"grpc\s+│ replica1\s+│ demo-serving-1\s+│ UP\s+│ L7OK\s+│ 40", text)


def test_a_replica_out_of_the_door_rotation_makes_the_stack_not_ok() -> None:
    """A DOWN replica slot: out of rotation, its errors shown, frontend.ok and ok false."""
    healthy = sample_status_ok()
    assert healthy.ok and dataclasses.replace(healthy, frontend=door_status()).ok
    down = door_status(status="DOWN", check_status="L4CON", econ="2", eresp="1")
    status = dataclasses.replace(healthy, frontend=down)
    assert not status.ok
    document = status.to_json()
    assert document["ok"] is False and document["frontend"]["ok"] is False
    assert document["frontend"]["in_rotation"]["grpc"] == ["demo-serving-1"]
    assert document["frontend"]["servers"][3]["errors"] == 3
    text = door_text(status)
    assert "in rotation REST 2, gRPC 1" in text
    assert re.search(r"grpc\s+│ replica2\s+│ demo-serving-2\s+│ DOWN\s+│ L4CON\s+│ 40\s+│ 3", text)


def test_an_unreadable_door_says_why_and_is_not_ok() -> None:
    """Stats not read (door stopped): the reason in the JSON and the table, frontend not ok."""
    door = DoorStatus("demo-frontend-1", "exited", error="the door is not running")
    status = dataclasses.replace(sample_status_ok(), frontend=door)
    assert not status.ok
    assert status.to_json()["frontend"]["error"] == "the door is not running"
    assert status.to_json()["frontend"]["in_rotation"] == {"rest": [], "grpc": []}
    assert (
        "front door demo-frontend-1 (exited): in rotation REST 0, gRPC 0; the door is not running"
        in door_text(status)
    )


def sample_status_ok() -> Any:
    """One running replica serving its one declared model."""
    return observe(
        project="demo",
        spec_path="s",
        rest=FakeRest({("m", None): [VersionState(1, "AVAILABLE")]}),  # type: ignore[arg-type]
        expectations=[ModelExpectation("m", (1,))],
        containers=[container()],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
    )


def test_replicas_behind_the_door_are_asked_at_their_network_address() -> None:
    """Replicas that publish nothing (door on) are asked on replica_urls, not called unpublished."""
    one = container(id="a" * 64, name="demo-serving-1", ports={})
    two = container(id="b" * 64, name="demo-serving-2", ports={})
    answers = {
        "http://172.31.0.2:18501": [VersionState(1, "AVAILABLE")],
        "http://172.31.0.3:18501": [VersionState(1, "LOADING")],
    }
    asked: list[str] = []

    class Closing(FakeRest):
        def close(self) -> None:
            pass

    def rest_for(url: str) -> Any:
        asked.append(url)
        return Closing({("m", None): answers[url]})

    status = observe(
        project="demo",
        spec_path="s",
        rest=FakeRest({("m", None): [VersionState(1, "AVAILABLE")]}),  # type: ignore[arg-type]
        expectations=[ModelExpectation("m", (1,))],
        containers=[one, two],
        host="127.0.0.1",
        rest_port=18501,
        grpc_port=18500,
        rest_for=rest_for,
        replica_urls={
            "demo-serving-1": "http://172.31.0.2:18501",
            "demo-serving-2": "http://172.31.0.3:18501",
        },
    )
    assert sorted(asked) == list(answers)
    first, second = status.to_json()["services"]
    assert (first["models_ok"], first["endpoints"]) == (True, {})
    assert (second["models_ok"], second["problems"]) == (False, ["m: version 1 LOADING"])
