"""Scaling behind the door: fixed server slots keep the door's config (and the door) as it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tfstack.render import COMPOSE_FILE, render_stack
from tfstack.render.frontdoor import DOOR_SLOTS, HAPROXY_CONFIG, door_slots
from tfstack.spec import StackSpec


def door_config(tmp_path: Path, replicas: int) -> str:
    data: dict[str, Any] = {
        "project": "door",
        "models": [{"name": "half_plus_two"}],
        "serving": {"replicas": replicas},
        "frontend": {"enabled": True},
    }
    spec = StackSpec.model_validate(data)
    files = render_stack(spec, tmp_path / "config" / "stack.yaml", tmp_path)
    return files[HAPROXY_CONFIG]


def servers(config: str, backend: str) -> list[str]:
    section = config.split(f"\nbackend {backend}\n", 1)[1].split("\nbackend ", 1)[0]
    return re.findall(r"^\s+server (\S+) serving:", section, flags=re.MULTILINE)


def test_scaling_within_the_slots_leaves_the_door_config_unchanged(tmp_path: Path) -> None:
    """1, 2 and DOOR_SLOTS replicas render the same door config: `up` does not recreate it."""
    configs = {n: door_config(tmp_path, n) for n in (1, 2, DOOR_SLOTS)}
    assert configs[1] == configs[2] == configs[DOOR_SLOTS]
    expected = [f"replica{n}" for n in range(1, DOOR_SLOTS + 1)]
    assert servers(configs[2], "rest_replicas") == expected
    assert servers(configs[2], "grpc_replicas") == expected


def test_more_replicas_than_slots_get_one_slot_each(tmp_path: Path) -> None:
    many = DOOR_SLOTS + 2
    assert door_slots(many) == many and door_slots(1) == DOOR_SLOTS
    config = door_config(tmp_path, many)
    assert len(servers(config, "grpc_replicas")) == many
    assert config != door_config(tmp_path, 2)


def rendered(tmp_path: Path, replicas: int) -> dict[str, str]:
    data: dict[str, Any] = {
        "project": "door",
        "models": [{"name": "half_plus_two"}],
        "serving": {"replicas": replicas},
        "frontend": {"enabled": True},
    }
    spec = StackSpec.model_validate(data)
    return render_stack(spec, tmp_path / "config" / "stack.yaml", tmp_path)


def test_behind_the_door_replicas_differ_only_in_their_count(tmp_path: Path) -> None:
    """Compose hashes a service without its replica count but with its deploy block: behind the
    door the block is always there (also for 1), so scaling recreates no running replica."""
    services = {n: yaml.safe_load(rendered(tmp_path, n)[COMPOSE_FILE])["services"] for n in (1, 2)}
    assert services[1]["serving"]["deploy"]["replicas"] == 1
    assert services[2]["serving"]["deploy"]["replicas"] == 2
    del services[1]["serving"]["deploy"]["replicas"], services[2]["serving"]["deploy"]["replicas"]
    assert services[1] == services[2]
