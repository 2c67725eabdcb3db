"""The door's stats (HAProxy 2.6 CSV as the frontend image serves it) and the rotation wait."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import requests

from tfstack.docker.compose import ContainerInfo
from tfstack.errors import StackError
from tfstack.serving.door import (
    DoorServer,
    DoorStatus,
    parse_stats_csv,
    read_door_stats,
    wait_in_rotation,
)

# Captured from a replicas: 2 stack's door after 40 gRPC and 45 REST predicts.
CSV = (Path(__file__).parent / "data" / "haproxy-stats.csv").read_text()
NAMES = {"172.31.0.2": "p-serving-1", "172.31.0.3": "p-serving-2"}


def edited(text: str, backend: str, slot: str, **fields: str) -> str:
    """The CSV with some fields of one server row changed (a replica gone down, errors)."""
    header, body = text.split("\n", 1)
    columns = header.lstrip("# ").split(",")
    rows = list(csv.reader(io.StringIO(body)))
    for row in rows:
        if row[:2] == [backend, slot]:
            for key, value in fields.items():
                row[columns.index(key)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return header + "\n" + out.getvalue()


def test_every_replica_slot_of_both_backends_is_read_and_named() -> None:
    """Server rows of rest_replicas and grpc_replicas only, mapped to containers by address."""
    servers = parse_stats_csv(CSV, NAMES)
    assert [(s.backend, s.slot, s.container, s.requests, s.status) for s in servers] == [
        ("rest", "replica1", "p-serving-1", 23, "UP"),
        ("rest", "replica2", "p-serving-2", 22, "UP"),
        ("grpc", "replica1", "p-serving-1", 40, "UP"),
        ("grpc", "replica2", "p-serving-2", 40, "UP"),
    ]
    assert all(s.in_rotation and s.check == "L7OK" and s.errors == 0 for s in servers)


def test_spare_slots_without_a_replica_are_not_listed() -> None:
    """A slot no replica holds (no address, MAINT by resolution: a spare slot, or one whose
    replica left the DNS answer) is left out; the rest stay. The replica itself still shows in
    status' services (exited, restarting)."""
    text = edited(CSV, "grpc_replicas", "replica2", addr="", status="MAINT (resolution)")
    servers = parse_stats_csv(text, NAMES)
    assert [(s.backend, s.slot) for s in servers] == [
        ("rest", "replica1"),
        ("rest", "replica2"),
        ("grpc", "replica1"),
    ]
    down = edited(CSV, "grpc_replicas", "replica2", status="DOWN")
    assert len(parse_stats_csv(down, NAMES)) == 4  # with an address: listed, out of rotation


def test_a_down_replica_leaves_rotation_with_its_errors_and_retries() -> None:
    """DOWN (SOCKERR) is out of rotation; econ+eresp are errors, wretr+wredis retries."""
    text = edited(
        CSV,
        "grpc_replicas",
        "replica2",
        status="DOWN",
        check_status="SOCKERR",
        econ="2",
        eresp="1",
        wretr="3",
        wredis="1",
    )
    status = DoorStatus("p-frontend-1", "running", tuple(parse_stats_csv(text, NAMES)))
    assert status.in_rotation("rest") == ["p-serving-1", "p-serving-2"]
    assert status.in_rotation("grpc") == ["p-serving-1"]
    down = status.to_json()["servers"][3]
    assert down == {
        "backend": "grpc",
        "slot": "replica2",
        "container": "p-serving-2",
        "address": "172.31.0.3:18500",
        "status": "DOWN",
        "in_rotation": False,
        "check": "SOCKERR",
        "requests": 40,
        "errors": 3,
        "retries": 4,
        "active": 0,
    }


class Response:
    def __init__(self, text: str) -> None:
        self.text = text

    def raise_for_status(self) -> None:
        return None


class Client:
    """docker's client, answering network addresses per container id."""

    def __init__(self, addresses: dict[str, str]) -> None:
        outer = addresses

        class Containers:
            def get(self, container_id: str) -> Any:
                ip = outer[container_id]
                return type(
                    "C", (), {"attrs": {"NetworkSettings": {"Networks": {"n": {"IPAddress": ip}}}}}
                )

        self.containers = Containers()


def info(name: str, service: str, state: str = "running") -> ContainerInfo:
    return ContainerInfo(
        id=name,
        name=name,
        service=service,
        state=state,
        health=None,
        exit_code=None,
        started_at="t",
        image_id="sha256:i",
        config_hash="h",
    )


def test_stats_are_read_from_the_doors_network_address() -> None:
    """The CSV is fetched on the door's address and stats port; rows named after the replicas."""
    asked: list[str] = []

    def get(url: str, timeout: float) -> Response:
        asked.append(url)
        return Response(CSV)

    client = Client({"p-frontend-1": "172.31.0.4", **{v: k for k, v in NAMES.items()}})
    status = read_door_stats(
        client,
        info("p-frontend-1", "frontend"),
        [info("p-serving-1", "serving"), info("p-serving-2", "serving")],
        stats_port=8404,
        get=get,
    )
    assert asked == ["http://172.31.0.4:8404/stats;csv;norefresh"]
    assert status.error is None
    assert status.to_json()["in_rotation"] == {
        "rest": ["p-serving-1", "p-serving-2"],
        "grpc": ["p-serving-1", "p-serving-2"],
    }


def test_unreadable_stats_become_an_error_not_an_exception() -> None:
    """A refused connection is reported in the status (status must still print)."""

    def get(url: str, timeout: float) -> Response:
        raise requests.ConnectionError("refused")

    status = read_door_stats(
        Client({"d": "172.31.0.4"}), info("d", "frontend"), [], stats_port=8404, get=get
    )
    assert status.servers == () and status.error is not None and "refused" in status.error
    stopped = read_door_stats(Client({}), info("d", "frontend", "exited"), [], stats_port=8404)
    assert stopped.error == "the door is not running"


def test_rotation_wait_returns_once_every_replica_is_up_for_both_protocols() -> None:
    """The wait polls until REST and gRPC each have the wanted number of replicas UP."""
    down = DoorStatus(
        "d",
        "running",
        tuple(parse_stats_csv(edited(CSV, "grpc_replicas", "replica2", status="DOWN"))),
    )
    up = DoorStatus("d", "running", tuple(parse_stats_csv(CSV)))
    answers = iter([down, down, up])
    assert wait_in_rotation(lambda: next(answers), 2, timeout=5, interval=0) is up


def test_rotation_wait_times_out_naming_each_slot() -> None:
    """On timeout the error lists every slot's backend, address, status and last check."""
    server = DoorServer("grpc", "replica2", "172.31.0.3:18500", "DOWN", "SOCKERR", 0, 0, 0, 0)
    with pytest.raises(StackError) as caught:
        wait_in_rotation(lambda: DoorStatus("d", "running", (server,)), 1, timeout=0, interval=0)
    text = str(caught.value)
    assert "0 REST and 0 gRPC replicas in rotation" in text
    assert "grpc replica2 172.31.0.3:18500 DOWN (SOCKERR)" in text
