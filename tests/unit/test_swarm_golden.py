"""Golden files of the Swarm target's render (``compose/stack.yml`` and its configs).

Cases: ``demo`` is config/stack.yaml with ``deploy.target: swarm``; ``scaled`` is a 3-replica spec
with batching, resources, vip, constraints and a per-node limit. Files in tests/golden/swarm/<case>/
are compared after parsing (YAML, text protos), so key order, quoting and comments do not matter.
The door's HAProxy config is the front door's template (its golden files are the front door's,
tests/golden/render/frontdoor/): here it is checked for what the Swarm changes (every server is
``tasks.serving``), and its content-versioned config name in the stack file is compared without its
digest. Regenerate with TFSTACK_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from tests.unit.specfixtures import valid_spec
from tests.unit.test_render import parsed
from tfstack.render.frontdoor import CONTAINER_CANARY_MAP
from tfstack.render.swarm import (
    CANARY_MAP_FILE,
    HAPROXY_FILE,
    STACK_FILE,
    SWARM_DIR,
    SwarmImages,
    canary_service_name,
    parse_stack_file,
    render_swarm,
    stack_name,
)
from tfstack.spec import StackSpec

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "swarm"
UPDATE_GOLDEN = os.environ.get("TFSTACK_UPDATE_GOLDEN") == "1"
IMAGES = SwarmImages(
    serving="tfstack-registry:5000/tfstack/serving-runtime:id-0bc6fb1510b9aaaa",
    frontend="tfstack-registry:5000/tfstack/frontend:id-644c1ccafd69bbbb",
    models="tfstack-registry:5000/tfstack/models-tfstack-demo:9c9c9c9c9c9c9c9c",
    models_digest="9c" * 32,
)


def _demo() -> tuple[StackSpec, Path, Path]:
    spec_path = ROOT / "config" / "stack.yaml"
    data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    data["deploy"]["target"] = "swarm"
    return StackSpec.model_validate(data), spec_path, ROOT


def _scaled() -> tuple[StackSpec, Path, Path]:
    data = valid_spec()
    data["serving"] |= {"replicas": 3, "resources": {"cpus": 1.5, "memory": "1536m"}}
    data["deploy"] = {
        "target": "swarm",
        "swarm": {
            "stack": "scoring",
            "endpoint_mode": "vip",
            "max_replicas_per_node": 2,
            "constraints": ["node.labels.tfstack==serving"],
            "update_delay_seconds": 5,
            "monitor_seconds": 120,
        },
    }
    root = Path("/srv/tfstack-scaled")  # never touched: only names the spec in headers
    return StackSpec.model_validate(data), root / "config" / "stack.yaml", root


CASES = {"demo": _demo, "scaled": _scaled}
DOOR_CONFIG = f"{SWARM_DIR}/{HAPROXY_FILE}"
_DOOR_DIGEST = re.compile(r"-haproxy-[0-9a-f]{12}")


def _render(case: str) -> dict[str, str]:
    spec, spec_path, root = CASES[case]()
    return dict(render_swarm(spec, spec_path, root, IMAGES))


def _comparable(path: str, text: str) -> object:
    """The file as data; the door config's name in the stack file without its digest."""
    if path == STACK_FILE:
        text = _DOOR_DIGEST.sub("-haproxy-DIGEST", text)
    return parsed(path, text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_swarm_render_matches_golden_files(case: str) -> None:
    """Each case renders exactly the golden set of files (the door's config aside), equal after
    parsing."""
    files = _render(case)
    assert DOOR_CONFIG in files
    del files[DOOR_CONFIG]
    folder = GOLDEN / case
    if UPDATE_GOLDEN:
        for old in folder.rglob("*") if folder.exists() else []:
            if old.is_file():
                old.unlink()
        for path, text in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(text, encoding="utf-8")
    golden = {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert sorted(files) == sorted(golden)
    for path, text in files.items():
        assert _comparable(path, text) == _comparable(path, golden[path]), path


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_door_finds_every_task_by_swarm_dns(case: str) -> None:
    """Every HAProxy server of the door names tasks.serving (or, for the weighted canary's two
    backends, the canary service's tasks) on the serving ports, none a bare service, and the stack
    file mounts that config and the empty canary map under content-versioned names."""
    spec, _, _ = CASES[case]()
    files = _render(case)
    servers = [
        line.split()
        for line in files[DOOR_CONFIG].splitlines()
        if line.strip().startswith(("server ", "server-template "))
    ]
    assert servers
    canary = f"tasks.{canary_service_name(stack_name(spec))}"
    ports = {
        f"{host}:{port}"
        for host in ("tasks.serving", canary)
        for port in (spec.serving.rest_port, spec.serving.grpc_port)
    }
    for words in servers:
        address = next(w for w in words if ":" in w and not w.startswith(":"))
        assert address in ports, words
        assert address.startswith(canary) == (words[1] == "canary1"), words
    stack = parse_stack_file(files[STACK_FILE])
    door, canary_map = stack["services"]["frontend"]["configs"]
    assert stack["configs"][door["source"]]["file"] == f"swarm/{HAPROXY_FILE}"
    assert stack["configs"][canary_map["source"]]["file"] == f"swarm/{CANARY_MAP_FILE}"
    assert canary_map["target"] == CONTAINER_CANARY_MAP


@pytest.mark.parametrize("case", sorted(CASES))
def test_swarm_render_is_byte_stable(case: str) -> None:
    """Two renders of the same spec give identical bytes (no timestamps, no machine state)."""
    assert _render(case) == _render(case)


def test_a_changed_update_policy_is_a_golden_mismatch() -> None:
    """The comparison sees meaning: another update delay differs from the golden stack file."""
    spec, spec_path, root = _demo()
    swarm = spec.deploy.swarm.model_copy(update={"update_delay_seconds": 9})
    changed = spec.model_copy(update={"deploy": spec.deploy.model_copy(update={"swarm": swarm})})
    text = render_swarm(changed, spec_path, root, IMAGES)[STACK_FILE]
    golden = (GOLDEN / "demo" / STACK_FILE).read_text(encoding="utf-8")
    assert _comparable(STACK_FILE, text) != _comparable(STACK_FILE, golden)
    assert parse_stack_file(text)["services"]["serving"]["deploy"]["update_config"]["delay"] == "9s"
