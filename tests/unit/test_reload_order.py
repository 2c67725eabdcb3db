"""Hot reload behind the door: one replica at a time, the next only once the door has the last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tfstack.docker.compose import Replica
from tfstack.serving.door import DoorServer, DoorStatus
from tfstack.spec import StackSpec
from tfstack.stack.lifecycle import Lifecycle
from tfstack.stack.plan import Loaded


def loaded(replicas: int, door: bool) -> Loaded:
    spec = StackSpec.model_validate(
        {
            "project": "p",
            "models": [{"name": "m"}],
            "serving": {"replicas": replicas},
            "frontend": {"enabled": door},
        }
    )
    return Loaded(spec, Path("/nowhere/config/stack.yaml"), Path("/nowhere"), ())


def rotation(name: str, state: str) -> DoorStatus:
    servers = tuple(
        DoorServer(b, "replica1", "10.0.0.2:8501", state, "L7OK", 0, 0, 0, 0, name)
        for b in ("rest", "grpc")
    )
    return DoorStatus("p-frontend-1", "running", servers)


def run(monkeypatch: pytest.MonkeyPatch, target: Loaded, doors: list[DoorStatus]) -> list[str]:
    lifecycle = Lifecycle(target.spec_path, root=Path("/nowhere"), client=object())
    events: list[str] = []
    names = [f"p-serving-{n}" for n in range(1, target.spec.serving.replicas + 1)]
    views = iter(doors)

    def reload(_l: Any, _s: Any, replica: Replica, _t: str, **_: Any) -> None:
        events.append(f"reload {replica.name}")

    def door(_l: Any, _s: Any) -> DoorStatus:
        view = next(views)
        events.append(f"door {view.in_rotation('rest')}")
        return view

    monkeypatch.setattr(
        lifecycle, "replicas", lambda _l, _s: [Replica(n, f"http://{n}", n) for n in names]
    )
    monkeypatch.setattr(lifecycle, "_reload_replica", reload)
    monkeypatch.setattr(lifecycle, "door_status", door)
    lifecycle.hot_reload(target, object(), "config", timeout=5)  # type: ignore[arg-type]
    return events


def test_the_next_replica_waits_until_the_door_has_the_last_one_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = run(
        monkeypatch,
        loaded(2, door=True),
        [rotation("p-serving-1", "DOWN"), rotation("p-serving-1", "UP")],
    )
    assert events == [
        "reload p-serving-1",
        "door []",  # loading its new version: out of rotation
        "door ['p-serving-1']",
        "reload p-serving-2",  # the last one: nothing after it to protect
    ]


def test_without_a_door_replicas_are_reloaded_back_to_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = run(monkeypatch, loaded(2, door=False), [])
    assert events == ["reload p-serving-1", "reload p-serving-2"]
