"""The stack's lifecycle behind the front door (#11), on one real ``replicas: 2`` stack.

The door checks API keys (``frontend.auth``): every client here sends one, and so must what
tfstack itself sends through the door (``up``'s samples, a rollout's label checks, ``status``).
Every test runs bounded REST + gRPC load through the door (``tfstack.bench.loadgen``, loopback,
unlabelled and via ``stable``) and counts failed requests:

- hot reload: a models-only change (a version and a label added, then taken away again) reloads
  each replica at its own address; 0 failed; right after ``up`` the new label and version answer
  through the door on every try, and each replica, asked directly, has them;
- ``rollout`` (stage, verify aside, load, promote, retire) and ``rollback``: 0 failed; right after
  each returns, asking ``stable`` through the door gets the new math on every try from both
  replicas;
- a replica that has not got every declared version AVAILABLE leaves the rotation (the door
  skips it, ``status`` shows it) and rejoins once it has them; 0 failed;
- scaling down and up again (``up`` with ``replicas: 2`` -> 1 -> 2): the door keeps running
  (same container), the leaving replica drains, the new one joins the rotation; 0 failed;
- degraded start (after ``down``, a model whose version cannot load): ``up`` fails naming it,
  both replicas serve the other model through the door (in rotation, every try answers) and
  ``status`` shows the failed model next to a healthy door.

The models: half_plus_two version 1 (x = 1 -> 2.5) and candidates written with TensorFlow
(``tfstack.bench.rollout``); version 2 and 3 are the ``good`` candidate (x = 1 -> 3.5).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from google.protobuf import text_format

from tfstack.bench.loadgen import Answer, LoadGenerator, LoadReport, Sender
from tfstack.bench.rollout import BODY, MODEL, V1_VALUE, V2_VALUE, RolloutScenario, write_candidates
from tfstack.build.images import BuiltImage
from tfstack.core import textproto
from tfstack.docker.compose import Replica
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import run_rollback, run_rollout
from tfstack.serving.client import GrpcClient, ModelRef, RestClient, ServingRequestError
from tfstack.serving.door import DoorStatus, wait_in_rotation, wait_replica_in_rotation
from tfstack.serving.tensors import rest_body_to_grpc, signature_inputs
from tfstack.serving.waiting import LoadFailed
from tfstack.stack.plan import load

pytestmark = pytest.mark.integration

RATE = 60.0  # requests per second through the door, REST and gRPC together
ASKS = 20  # consecutive requests that must all succeed right after a change
KEY = "lifecycle-key-" + "c3" * 12
HEADERS = {"Authorization": f"Bearer {KEY}"}
METADATA = [("authorization", f"Bearer {KEY}")]


def rest_client(url: str) -> RestClient:
    return RestClient(url, timeout=10, headers=HEADERS)


def grpc_client(target: str) -> GrpcClient:
    return GrpcClient(target, timeout=10, metadata=METADATA)


def say(text: str) -> None:
    print(f"tfstack: {text}", file=sys.stderr)


class DoorScenario:
    """The rollout scenario's project with ``replicas: 2`` behind the door and a pinned policy."""

    def __init__(self, scenario: RolloutScenario, client: docker.DockerClient) -> None:
        self.scenario = scenario
        self.client = client
        spec = yaml.safe_load(scenario.spec_path.read_text())
        spec["serving"]["replicas"] = 2
        # The door runs as 1000:1000 and reads the keys file as that user.
        keys = scenario.root / "secrets" / "api_keys"
        keys.parent.mkdir(mode=0o755)
        keys.write_text(f"# lifecycle test key\n{KEY}\n")
        keys.chmod(0o600)
        os.chown(keys, 1000, 1000)
        # Short health checks: a replica leaves and rejoins the rotation within a second. On
        # explicitly, so the door stays when the replicas scale down to one.
        spec["frontend"] = {
            "enabled": True,
            "health_interval_ms": 500,
            "auth": {"api_keys_file": str(keys)},
        }
        # Pinned, so a version directory written for a test is not picked up by polling.
        model = self.model_entry(spec)
        model["policy"] = {"specific": [1]}
        self.write_spec(spec)

    # -- the spec -------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.scenario.spec_path.read_text())
        return loaded

    def write_spec(self, spec: dict[str, Any]) -> None:
        self.scenario.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    @staticmethod
    def model_entry(spec: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = next(m for m in spec["models"] if m["name"] == MODEL)
        return entry

    def set_model(self, *, versions: list[int], labels: dict[str, int]) -> None:
        spec = self.spec()
        model = self.model_entry(spec)
        model["policy"] = {"specific": versions}
        model["labels"] = labels
        self.write_spec(spec)

    # -- the stack ------------------------------------------------------------------------

    def lifecycle(self) -> Any:
        return self.scenario.lifecycle()

    def up(self) -> Any:
        return self.lifecycle().up(timeout=180)

    def door(self) -> DoorStatus:
        lifecycle = self.lifecycle()
        loaded = load(self.scenario.spec_path, self.scenario.root)
        status: DoorStatus | None = lifecycle.door_status(loaded, lifecycle.stack(loaded.spec))
        assert status is not None
        return status

    def replicas(self) -> list[Replica]:
        """Each running replica at its own address (the way `up` reaches them)."""
        lifecycle = self.lifecycle()
        loaded = load(self.scenario.spec_path, self.scenario.root)
        return list(lifecycle.replicas(loaded, lifecycle.stack(loaded.spec)))

    def frontend_id(self) -> str:
        (door,) = self.client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={self.scenario.project}",
                    "com.docker.compose.service=frontend",
                ]
            }
        )
        return str(door.id)

    def load(self, seconds: float = 90.0) -> LoadGenerator:
        return LoadGenerator(self.senders(), rate=RATE, max_seconds=seconds)

    def senders(self) -> dict[str, Sender]:
        """REST and gRPC, unlabelled and via ``stable``, each request with the API key (like
        ``tfstack.bench.loadgen.stack_senders``, which sends none)."""
        local = threading.local()
        channel = grpc_client(self.scenario.grpc_target)
        request = rest_body_to_grpc(BODY, signature_inputs(channel.metadata(ModelRef(MODEL)), None))
        senders: dict[str, Sender] = {}
        for name, ref in (
            ("default", ModelRef(MODEL)),
            ("stable", ModelRef(MODEL, label="stable")),
        ):

            def send_rest(ref: ModelRef = ref) -> Answer:
                if getattr(local, "rest", None) is None:
                    local.rest = rest_client(self.scenario.rest_url)
                return float(local.rest.predict(ref, BODY)["predictions"][0]), None

            def send_grpc(ref: ModelRef = ref) -> Answer:
                answer = channel.predict(ref, request.tensors, signature=request.signature)
                values = [t.values[0] for _, t in sorted(answer.outputs.items()) if t.values]
                return (float(values[0]) if values else None), answer.version

            senders[f"rest/{name}"] = send_rest
            senders[f"grpc/{name}"] = send_grpc
        return senders


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_candidates(tmp_path_factory.mktemp("door-lifecycle-candidates"))


@pytest.fixture(scope="module")
def door(
    docker_client: docker.DockerClient, runtime_image: BuiltImage, candidates: dict[str, Path]
) -> Iterator[DoorScenario]:
    scenario = RolloutScenario(docker_client, runtime_image.id, candidates)
    try:
        made = DoorScenario(scenario, docker_client)
        made.up()
        wait_in_rotation(made.door, 2, timeout=60)
        yield made
    finally:
        scenario.down()


def rest_requests(status: DoorStatus) -> dict[str, int]:
    """REST requests the door sent to each replica so far."""
    return {s.container: s.requests for s in status.servers if s.backend == "rest" and s.container}


def assert_clean(report: LoadReport, *, values: set[float]) -> None:
    print(report.summary(), file=sys.stderr)
    assert report.total >= 100, report.summary()
    assert not report.failures, [f.error for f in report.failures[:10]]
    assert {s.value for s in report.samples} <= values, report.summary()


def ask_through_door(door: DoorScenario, ref: ModelRef, want: float) -> None:
    """ASKS consecutive REST predicts of ``ref`` through the door, each answering ``want``; every
    replica served some of them (the door's own counters)."""
    before = rest_requests(door.door())
    with rest_client(door.scenario.rest_url) as rest:
        answers = [rest.predict(ref, BODY)["predictions"][0] for _ in range(ASKS)]
    assert answers == [want] * ASKS, answers
    after = rest_requests(door.door())
    assert len(after) == 2 and all(after[c] > before.get(c, 0) for c in after), (before, after)
    with grpc_client(door.scenario.grpc_target) as channel:
        for _ in range(ASKS // 2):
            assert channel.predict_json(ref, BODY) == {"predictions": [want]}


def labels_on(replica: Replica, label: str) -> list[float]:
    with RestClient(replica.rest_url, timeout=10) as rest:
        return [rest.predict(ModelRef(MODEL, label=label), BODY)["predictions"][0]]


# --------------------------------------------------------------------------------------------


def test_hot_reload_reaches_every_replica_and_loses_no_request(
    door: DoorScenario, candidates: dict[str, Path]
) -> None:
    """Version 3 and label `next` added, then taken away, by `up` under load: 0 failed; right
    after the first `up` every request for `next` and for version 3 through the door answers
    with version 3's math, and each replica asked directly has the label."""
    with (
        RestClient(door.scenario.rest_url, timeout=10) as keyless,
        pytest.raises(ServingRequestError) as refused,
    ):
        keyless.predict(ModelRef(MODEL), BODY)
    assert refused.value.status == 401  # the door checks keys: what passes below sent one
    version_dir = door.scenario.model_dir / "3"
    shutil.copytree(candidates["good"], version_dir)
    version_dir.chmod(0o755)
    with door.load() as generator:
        time.sleep(1.5)
        door.set_model(versions=[1, 3], labels={"stable": 1, "next": 3})
        report = door.up()
        assert report.plan.action.value == "reload", report.plan.describe()
        ask_through_door(door, ModelRef(MODEL, label="next"), V2_VALUE)
        ask_through_door(door, ModelRef(MODEL, version=3), V2_VALUE)
        replicas = door.replicas()
        assert len(replicas) == 2
        assert all(labels_on(r, "next") == [V2_VALUE] for r in replicas)
        door.set_model(versions=[1], labels={"stable": 1})
        assert door.up().plan.action.value == "reload"
        time.sleep(1.0)
    # Unlabelled requests get the highest version served: 3 while it is.
    assert_clean(generator.report, values={V1_VALUE, V2_VALUE})
    for replica in door.replicas():
        with RestClient(replica.rest_url, timeout=10) as rest:
            states = rest.model_status(ModelRef(MODEL))
            assert [s.version for s in states if s.available] == [1], states
    shutil.rmtree(version_dir)


def test_rollout_and_rollback_move_labels_on_every_replica_first(
    door: DoorScenario, candidates: dict[str, Path]
) -> None:
    """rollout v2 then rollback under load: 0 failed; right after each returns, `stable` through
    the door answers the new math on every try, served by both replicas; each transition asked
    its labels through the door."""
    with door.load() as generator:
        time.sleep(1.5)
        outcome = run_rollout(
            door.scenario.context(say),
            RolloutRequest(MODEL, version=2, source=str(candidates["good"])),
        )
        ask_through_door(door, ModelRef(MODEL, label="stable"), V2_VALUE)
        back = run_rollback(door.scenario.context(say))
        ask_through_door(door, ModelRef(MODEL, label="stable"), V1_VALUE)
        time.sleep(1.0)
    assert_clean(generator.report, values={V1_VALUE, V2_VALUE})
    details = {r.step.name: r.detail or "" for r in outcome.journal.steps}
    assert "promote" in details and "on 2 replicas" in details["promote"], details
    assert "asked 4x through the door" in details["promote"], details
    assert back.journal.status == "done"
    for replica in door.replicas():
        assert labels_on(replica, "stable") == [V1_VALUE]


def _with_missing_version(config_text: str, version: int) -> str:
    config: Any = textproto.parse(config_text, textproto.model_server_config())
    (entry,) = config.model_config_list.config
    entry.model_version_policy.specific.versions.append(version)
    return str(text_format.MessageToString(config))


def test_a_replica_missing_a_declared_version_is_out_of_rotation(door: DoorScenario) -> None:
    """One replica told (directly) to serve a version that does not exist: its /readyz fails, the
    door takes it out and `status` shows it; clients see no failure; the right config puts it
    back."""
    first, second = door.replicas()
    applied = (door.scenario.root / "config" / "models.config").read_text()
    with door.load(seconds=60) as generator:
        time.sleep(1.5)
        with GrpcClient(second.grpc_target, timeout=30) as direct:
            direct.reload_config(_with_missing_version(applied, 7), timeout=30)
        deadline = time.monotonic() + 20
        while second.name in door.door().in_rotation("rest") and time.monotonic() < deadline:
            time.sleep(0.2)
        status = door.lifecycle().status()
        document = status.to_json()["frontend"]
        assert document["in_rotation"] == {"rest": [first.name], "grpc": [first.name]}, document
        out = [s for s in document["servers"] if s["container"] == second.name]
        assert out and all(not s["in_rotation"] for s in out), out
        assert not document["ok"] and not status.ok
        ask_through_door_one(door, first.name)
        with GrpcClient(second.grpc_target, timeout=30) as direct:
            direct.reload_config(applied, timeout=30)
        wait_replica_in_rotation(door.door, second.name, timeout=20)
        time.sleep(1.0)
    assert_clean(generator.report, values={V1_VALUE})
    assert door.lifecycle().status().ok


def ask_through_door_one(door: DoorScenario, only: str) -> None:
    """While one replica is out, every request through the door goes to the other."""
    before = rest_requests(door.door())
    with rest_client(door.scenario.rest_url) as rest:
        for _ in range(ASKS):
            assert rest.predict(ModelRef(MODEL, label="stable"), BODY) == {"predictions": [2.5]}
    after = rest_requests(door.door())
    grew = {c for c in after if after[c] > before.get(c, 0)}
    assert grew == {only}, (before, after)


def test_scaling_down_and_up_under_load_keeps_the_door(door: DoorScenario) -> None:
    """`up` with replicas 2 -> 1 under load: the door is not recreated, the leaving replica
    drains, 0 failed; one replica stays in rotation. Then 1 -> 2: the new replica joins the
    rotation, the door still the same container, 0 failed."""
    door_before = door.frontend_id()
    with door.load(seconds=90) as generator:
        time.sleep(1.5)
        spec = door.spec()
        spec["serving"]["replicas"] = 1
        door.write_spec(spec)
        down = door.up()
        time.sleep(2.0)
        single = door.door()
        spec["serving"]["replicas"] = 2
        door.write_spec(spec)
        up = door.up()
        wait_in_rotation(door.door, 2, timeout=30)
        time.sleep(1.0)
    assert down.plan.reasons == ("serving.replicas: 2 running, 1 wanted",), down.plan
    assert up.plan.reasons == ("serving.replicas: 1 running, 2 wanted",), up.plan
    assert len(single.in_rotation("rest")) == 1 == len(single.in_rotation("grpc")), single
    assert door.frontend_id() == door_before
    assert_clean(generator.report, values={V1_VALUE})
    ask_through_door(door, ModelRef(MODEL, label="stable"), V1_VALUE)


def test_degraded_start_behind_the_door_serves_the_rest_through_it(
    door: DoorScenario, candidates: dict[str, Path]
) -> None:
    """`down`, then `up` with a second model whose only version is corrupt: `up` raises LoadFailed
    naming it; both replicas are in the door's rotation serving half_plus_two (every try through
    the door answers, from both); the broken model is not served; status shows it failed and the
    door healthy."""
    door.lifecycle().down()
    broken = door.scenario.root / "models" / "broken"
    shutil.copytree(candidates["corrupt"], broken / "1")
    for path in [broken, *broken.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    spec = door.spec()
    spec["serving"]["replicas"] = 2
    spec["models"].append({"name": "broken"})
    door.write_spec(spec)
    with pytest.raises(LoadFailed, match="broken") as raised:
        door.up()
    assert [f[0] for f in raised.value.failures] == ["broken"]
    wait_in_rotation(door.door, 2, timeout=30)
    ask_through_door(door, ModelRef(MODEL, label="stable"), V1_VALUE)
    with (
        rest_client(door.scenario.rest_url) as rest,
        pytest.raises(ServingRequestError) as missing,
    ):
        rest.predict(ModelRef("broken"), BODY)
    assert missing.value.status == 404
    status = door.lifecycle().status()
    document = status.to_json()
    assert document["frontend"]["ok"], document["frontend"]
    assert len(document["frontend"]["in_rotation"]["rest"]) == 2
    models = {m["name"]: m for m in document["models"]}
    assert models[MODEL]["ok"] and not models["broken"]["ok"], models
    assert not status.ok
