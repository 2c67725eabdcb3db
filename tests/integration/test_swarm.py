"""The Swarm target end to end on a local 3-node cluster (engines in containers, docs/swarm.md).

One cluster for the whole module (``cluster_up``), one stack deployed on it with ``swarm_up``:
half_plus_two (label ``stable`` -> 1), half_plus_three and upstream's zero-padded
upstream_half_plus_two, 3 replicas with at most 2 per node, the door on loopback ports chosen at
random. The TF Serving contract cases of ``test_contract`` (REST and gRPC) run through the door:
they are imported here and take this module's ``target`` fixture. Then: the tasks' spread, a
no-change ``up``, bad input (no manager, too many replicas for the placement), a rollout and its
rollback under load, the model images those deploys left, a rollout process killed half way then
aborted or resumed, a worker node killed under ~50 req/s REST load, and ``down`` +
``cluster.down`` leaving nothing labelled behind.

Tests run in file order and share the cluster; the module's finalizer removes the stack and the
cluster whatever happened. Budget: the whole module in under 10 minutes on 2 shared cores (most of
it is the first push of the runtime image and each node pulling it). Figures are printed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from tests.integration.test_contract import (
    UPSTREAM_MODEL,
    Endpoint,
    test_grpc_outputs_in_float_val_from_a_zero_padded_version,
    test_grpc_predict_contract,
    test_grpc_unknown_model_is_not_found,
    test_grpc_wrong_input_dtype_is_refused,
    test_rest_contract,
)
from tfstack.bench.canary import write_canary_candidates
from tfstack.bench.loadgen import LoadGenerator, LoadRelay, LoadReport, Sample, stack_senders
from tfstack.bench.rollout import free_port
from tfstack.bench.swarm import remove_run_images, replacements
from tfstack.build.frontend import ensure_frontend_image
from tfstack.build.images import BuiltImage
from tfstack.build.modelimage import (
    model_image_tag,
    model_repository_name,
    parse_engine_images,
    reference_repository,
    same_repository,
)
from tfstack.cluster import (
    ClusterError,
    cluster_down,
    cluster_status,
    cluster_up,
    remove_leftover_cluster,
)
from tfstack.cluster.apply import node_containers
from tfstack.cluster.plan import CLUSTER_LABEL, CLUSTER_NAME
from tfstack.errors import RolloutError
from tfstack.models.demo import write_demo_models, write_half_plus
from tfstack.render.frontdoor import SERVING_SERVICE
from tfstack.render.swarm import LABEL_REVISION
from tfstack.rollout.journal import read_journal, status_summary
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.runner import Context
from tfstack.spec.deploy import LOCAL_PUSH_REGISTRY
from tfstack.spec.load import load_spec
from tfstack.stack.swarm import (
    LABEL_BESIDE_STACK,
    STACK_LABEL,
    Manager,
    SwarmError,
    manager_url,
    nodes,
    service_ids,
    service_specs,
    swarm_down,
    swarm_status,
    swarm_up,
    tasks,
)
from tfstack.stack.swarm_rollout import swarm_rollback, swarm_rollout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "tfstack-swarm-it"
SERVING_REPOSITORY = "tfstack-it/swarm"  # the runtime image, tagged per run
FRONTEND_REPOSITORY = "tfstack/frontend"
MODEL = "half_plus_two"
REPLICAS = 3
PER_NODE = 2  # room for a killed node's task on the two others
UP_TIMEOUT_S = 420.0
RECOVERY_LIMIT_S = 150.0
REPLACEMENT_LIMIT_S = 45.0  # node killed -> task healthy elsewhere (goal 30 s; margin for noise)
# A killed node drops packets without a reset. The Swarm door opens a connection per request
# (a dead task is a connect timeout after 1 s, retried on another task, and marks the task down)
# and retries a request left unanswered after rest_api_timeout_ms + 1 s: no request may fail.
REST_TIMEOUT_MS = 5000
SLOW_S = 0.5  # an answer this slow after the kill met the dead node and was retried
CANARY_P99_MS = 40  # server-side: good candidates 6-12 ms here once warm, slow ones 66-205 ms
CANARY_WINDOW_S = 8
CANARY_TRAFFIC = (25, 100)
SPLIT_TOLERANCE = 10.0  # points: ~200 unversioned requests per window at 50 req/s (3 sd)
SETTLE_S = 1.0  # the share is set at the start of a step; count from a little later
KILLED_NODE = f"{CLUSTER_NAME}-node-3"  # a worker (node 1 is the manager and runs the door)

# The contract cases, collected here with this module's `target` (the door). Imported names are
# re-exported so that pytest collects them in this module.
__all__ = [
    "test_grpc_outputs_in_float_val_from_a_zero_padded_version",
    "test_grpc_predict_contract",
    "test_grpc_unknown_model_is_not_found",
    "test_grpc_wrong_input_dtype_is_refused",
    "test_rest_contract",
]


def spec_data(*, project: str, image: str, grpc_port: int, rest_port: int) -> dict[str, Any]:
    """The module's stack spec (the contract suite's models) as plain data."""
    return {
        "format": 1,
        "project": project,
        "model_repository": "../models",
        "models": [
            {
                "name": "half_plus_two",
                "policy": {"specific": [1]},
                "labels": {"stable": 1},
                # No `expect`: the rollout's version 2 answers 0.5x + 3 (the contract cases
                # check the answers of version 1).
                "samples": [{"name": "predict", "body": {"instances": [1.0, 2.0, 5.0]}}],
                # Gates for the weighted canaries, sized for windows of a few seconds on three
                # nodes sharing 2 cores.
                "slo": {
                    "error_rate": 0.01,
                    "p99_ms": CANARY_P99_MS,
                    # At 100 % one canary task takes every unversioned request while three
                    # replicas share the labelled ones: single-digit ms p99s, noisy ratios.
                    "max_latency_ratio": 4,
                    "min_requests": 20,
                    "window_seconds": CANARY_WINDOW_S,
                    "max_window_seconds": 40,
                },
            },
            {"name": "half_plus_three", "policy": {"latest": 1}},
            {"name": "upstream_half_plus_two", "policy": {"latest": 1}},
        ],
        "serving": {
            "image": image,
            "grpc_port": grpc_port,
            "rest_port": rest_port,
            "replicas": REPLICAS,
            "max_load_retries": 0,
            # The door retries a request left unanswered by a vanished node after
            # rest_api_timeout_ms + 1 s: below the load generator's 10 s client timeout.
            "rest_api_timeout_ms": REST_TIMEOUT_MS,
        },
        "monitoring": {"enabled": True},
        "deploy": {"target": "swarm", "swarm": {"max_replicas_per_node": PER_NODE}},
    }


@dataclass
class SwarmStack:
    """The deployed module stack: where its spec is and how to reach its door."""

    root: Path
    spec_path: Path
    data: dict[str, Any]
    manager: Manager
    stack: str
    rest_port: int
    grpc_port: int
    first_up_s: float = 0.0
    cluster_up_s: float = 0.0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.rest_port, self.grpc_port)

    def variant(self, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
        """Another spec in the same project (same models), changed by ``change``."""
        data = yaml.safe_load(yaml.safe_dump(self.data))
        change(data)
        path = self.root / "config" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


def say(text: str) -> None:
    print(f"tfstack: {text}", flush=True)


def _docker_lines(*argv: str) -> list[str]:
    result = subprocess.run(
        ["docker", *argv], capture_output=True, text=True, check=False, timeout=60
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def _write_project(root: Path, data: dict[str, Any]) -> Path:
    write_demo_models(root / "models", include_resnet=False)
    shutil.copytree(UPSTREAM_MODEL, root / "models" / "upstream_half_plus_two")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    spec_path = root / "config" / "stack.yaml"
    spec_path.parent.mkdir(mode=0o755)
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec_path


def _remove_module_images(client: docker.DockerClient) -> None:
    """This module's serving tags, model images and push tags (the door's image stays)."""
    removed = remove_run_images(
        client, [SERVING_REPOSITORY, model_repository_name(PROJECT)], [FRONTEND_REPOSITORY]
    )
    if removed:
        say(f"removed {len(removed)} image tags of this module's runs")


def _remove_everything(spec_path: Path | None) -> None:
    """The finalizer: the stack (if the manager still answers), then the cluster."""
    if spec_path is not None:
        with contextlib.suppress(Exception):
            swarm_down(spec_path, spec_path.parents[1], timeout=60)
    with contextlib.suppress(Exception):
        cluster_down()


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient, runtime_image: BuiltImage) -> Iterator[SwarmStack]:
    """A 3-node local cluster with the module's stack deployed; both removed afterwards."""
    try:
        remove_leftover_cluster(say=say)  # a killed run's; a user's or a live run's fails here
    except ClusterError as exc:
        pytest.fail(f"this module makes and removes its own cluster: {exc}")
    _remove_module_images(docker_client)  # what a killed run left (no other run is alive)
    ensure_frontend_image(docker_client, "tfstack/frontend:latest", source_root=ROOT, say=say)
    tag = f"{SERVING_REPOSITORY}:{secrets.token_hex(4)}"
    docker_client.images.get(runtime_image.id).tag(*tag.split(":"))
    root = Path(tempfile.mkdtemp(prefix="tfstack-swarm-"))
    root.chmod(0o755)
    rest_port, grpc_port = free_port(), free_port()
    data = spec_data(project=PROJECT, image=tag, grpc_port=grpc_port, rest_port=rest_port)
    spec_path: Path | None = None
    try:
        spec_path = _write_project(root, data)
        started = time.monotonic()
        cluster_up(3, published_ports=(grpc_port, rest_port), made_by="tests", say=say)
        cluster_s = time.monotonic() - started
        started = time.monotonic()
        report = swarm_up(spec_path, root, timeout=UP_TIMEOUT_S, say=say)
        assert report.action == "deploy"
        spec = load_spec(spec_path)
        made = SwarmStack(
            root,
            spec_path,
            data,
            Manager(manager_url(spec)),
            report.stack,
            rest_port,
            grpc_port,
            first_up_s=time.monotonic() - started,
            cluster_up_s=cluster_s,
        )
        print(
            f"\nswarm: cluster.up {cluster_s:.1f}s, first up {made.first_up_s:.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in report.timings.items())})",
            flush=True,
        )
        yield made
    finally:
        _remove_everything(spec_path)
        _remove_module_images(docker_client)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def target(swarm: SwarmStack) -> Endpoint:
    """The door of the Swarm stack: what the imported contract cases talk to."""
    return swarm.endpoint


# ----------------------------------------------------------------------------- placement, up


def test_serving_tasks_spread_over_nodes_and_serve_every_version(swarm: SwarmStack) -> None:
    """Status: 3 serving tasks on at least 2 nodes, each serving every declared version."""
    status = swarm_status(swarm.spec_path, swarm.root)
    assert status.ok, "\n".join(status.describe())
    serving = status.services[SERVING_SERVICE]
    running = [
        t
        for t in status.tasks
        if t.service.startswith(serving) and t.desired == "running" and t.state == "running"
    ]
    assert len(running) == REPLICAS
    per_node = {t.node for t in running}
    assert len(per_node) >= 2, f"serving tasks all on {per_node}"
    assert len(status.per_task) == REPLICAS
    print(f"\nswarm: serving tasks on {sorted(t.node for t in running)}", flush=True)


def test_second_up_changes_nothing(swarm: SwarmStack) -> None:
    """A second up with the same spec is a noop: no service spec changes."""
    before = service_specs(swarm.manager, swarm.stack)
    started = time.monotonic()
    report = swarm_up(swarm.spec_path, swarm.root, timeout=120)
    took = time.monotonic() - started
    assert report.action == "noop"
    assert service_specs(swarm.manager, swarm.stack) == before
    print(f"\nswarm: no-change up {took:.1f}s", flush=True)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("where", ["DOCKER_HOST", "deploy.swarm.manager"])
def test_no_manager_reachable_is_a_clear_error(
    swarm: SwarmStack, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A manager address nothing listens on: the error names it and says what to do."""
    closed = f"tcp://127.0.0.1:{free_port()}"
    spec_path = swarm.spec_path
    if where == "DOCKER_HOST":
        monkeypatch.setenv("DOCKER_HOST", closed)
    else:
        spec_path = swarm.variant("manager", lambda d: d["deploy"]["swarm"].update(manager=closed))
    with pytest.raises(SwarmError) as raised:
        swarm_up(spec_path, swarm.root, timeout=30)
    assert f"no Swarm manager reachable at {closed}" in raised.value.message
    assert "cluster.up" in (raised.value.hint or "")


def test_more_replicas_than_placement_allows_deploys_nothing(swarm: SwarmStack) -> None:
    """7 replicas at 2 per node on 3 nodes: an error naming the service; no stack is made."""

    def change(data: dict[str, Any]) -> None:
        data["project"] = f"{PROJECT}-big"
        data["serving"]["replicas"] = 7

    spec_path = swarm.variant("big", change)
    with pytest.raises(SwarmError) as raised:
        swarm_up(spec_path, swarm.root, timeout=30)
    assert raised.value.message.startswith("service serving: 7 replicas")
    assert "max_replicas_per_node 2" in raised.value.message
    assert service_ids(swarm.manager, f"{PROJECT}-big") == {}
    assert not swarm.manager.run("config", "ls", "--quiet", "--filter", f"name={PROJECT}-big-")


# ----------------------------------------------------------------------------- rollout


def _stack_load(swarm: SwarmStack, max_seconds: float) -> LoadGenerator:
    senders = stack_senders(
        "half_plus_two",
        rest_url=f"http://127.0.0.1:{swarm.rest_port}",
        grpc_target=f"127.0.0.1:{swarm.grpc_port}",
        body={"instances": [1.0]},
        labels=("stable",),
    )
    return LoadGenerator(senders, rate=50, max_seconds=max_seconds)


def _rollout_load(swarm: SwarmStack) -> LoadRelay:
    """Load for a whole rollout, handed over at each step's start (``on_step``): one generator
    stops at 120 s, and a weighted rollout on a loaded machine took 127 s once."""
    return LoadRelay(lambda: _stack_load(swarm, 110)).start()


def _canary_leftovers(swarm: SwarmStack) -> list[str]:
    """Services, configs and manager containers tfstack made beside the stack."""
    selector = f"label={LABEL_BESIDE_STACK}={swarm.stack}"
    return [
        *swarm.manager.run("service", "ls", "--quiet", "--filter", selector).split(),
        *swarm.manager.run("config", "ls", "--quiet", "--filter", selector).split(),
        *swarm.manager.run("ps", "--all", "--quiet", "--filter", selector).split(),
    ]


def _unversioned_share(samples: list[Sample]) -> tuple[float, int]:
    """Percent of unversioned answers from version 2 (x = 1: 3.5; version 1 answers 2.5)."""
    counted = [s for s in samples if s.ok and s.target.endswith("/default")]
    new = [s for s in counted if s.value == 3.5]
    return (100.0 * len(new) / len(counted) if counted else 0.0), len(counted)


def test_weighted_canary_rollout_then_rollback_under_load_fail_no_request(
    swarm: SwarmStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`rollout --traffic 25,100` of half_plus_two v2 (0.5x + 3) on the Swarm, then its rollback,
    under 50 req/s REST+gRPC through the door: 0 failed requests; the canary service takes about
    25 % of unversioned requests at the first step and all at the second, `stable` answers 3.5
    only after promote began and 2.5 after the rollback; nothing is left beside the stack."""
    candidate = tmp_path_factory.mktemp("swarm-candidate") / "v2"
    write_half_plus(candidate, offset=3.0, offset2=4.0, model_name="half_plus_two")
    for path in [candidate, *candidate.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    context = Context(swarm.spec_path, swarm.root, "half_plus_two", say=say)
    marks: dict[str, float] = {}
    loads: list[LoadRelay] = []  # running ones; each is stopped once (stop() stamps the end)

    def on_step(name: str, event: str, at: float) -> None:
        marks[f"{name}:{event}"] = at
        if name in ("canary_start", "rollback") and event == "start":
            loads.append(_rollout_load(swarm))
        elif event == "start" and loads:
            loads[-1].handover()

    try:
        started = time.monotonic()
        outcome = swarm_rollout(
            context,
            RolloutRequest(
                "half_plus_two",
                version=2,
                source=str(candidate),
                traffic=CANARY_TRAFFIC,
                analysis_s=CANARY_WINDOW_S,
            ),
            on_step=on_step,
        )
        rollout_s = time.monotonic() - started
        time.sleep(2)
        rollout_load = loads.pop().stop()
        left = _canary_leftovers(swarm)
        started = time.monotonic()
        back = swarm_rollback(context, on_step=on_step)
        rollback_s = time.monotonic() - started
        time.sleep(2)
        rollback_load = loads.pop().stop()
    finally:
        for load in loads:
            load.stop()
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    splits = {}
    for percent in CANARY_TRAFFIC:
        # The step's analysis window is its last CANARY_WINDOW_S seconds: the share is set just
        # before it (after the door and the overlay probe are found, a few seconds on the Swarm).
        end = marks[f"traffic_{percent}:done"]
        begin = max(marks[f"traffic_{percent}:start"], end - CANARY_WINDOW_S) + SETTLE_S
        splits[percent] = _unversioned_share(rollout_load.window(start=begin, end=end))
    print(
        f"\nswarm canary rollout {rollout_s:.1f}s ({steps}); load: {rollout_load.summary()}; "
        + "; ".join(f"{p} %: {share:.1f} % of {n}" for p, (share, n) in splits.items())
        + f"\nswarm rollback {rollback_s:.1f}s; load: {rollback_load.summary()}",
        flush=True,
    )
    assert outcome.journal.status == "done" and back.journal.status == "done"
    names = [r.step.name for r in outcome.journal.steps]
    assert names[names.index("canary_start") :] == [
        "canary_start",
        *(f"traffic_{p}" for p in CANARY_TRAFFIC),
        "load",
        "promote",
        "canary_stop",
    ]
    for report in (rollout_load, rollback_load):
        assert report.stop_reason == "stopped by the caller", report.stop_reason
    assert rollout_load.failures == [], rollout_load.summary()
    assert rollback_load.failures == [], rollback_load.summary()
    first, counted = splits[CANARY_TRAFFIC[0]]
    assert counted >= 100, counted
    assert abs(first - CANARY_TRAFFIC[0]) <= SPLIT_TOLERANCE, splits
    assert splits[100][0] == 100.0, splits
    before_canary = rollout_load.window(end=marks["traffic_25:start"])
    assert before_canary and {s.value for s in before_canary} == {2.5}
    early_v2 = [
        s
        for s in rollout_load.window(end=marks["promote:start"])
        if s.target.endswith("/stable") and s.value == 3.5
    ]
    assert early_v2 == [], "stable answered version 2 before promote began"
    assert 3.5 in rollout_load.values("rest/stable")
    assert left == [], f"left beside the stack after the rollout: {left}"
    assert rollback_load.window(start=marks["rollback:done"])
    assert {s.value for s in rollback_load.window(start=marks["rollback:done"])} == {2.5}


def test_slow_canary_is_rolled_back_by_its_gates_at_the_first_step(
    swarm: SwarmStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A candidate that answers right but slowly (p99 far above slo.p99_ms): rolled back at
    25 % by the latency gate with the figures in the error, 0 failed requests, the spec and the
    Swarm back on version 1, no canary left. Its version number (3) is used again by the next
    test with other bytes: the nodes must then serve those."""
    candidate = write_canary_candidates(tmp_path_factory.mktemp("swarm-slow"))["slow"]
    context = Context(swarm.spec_path, swarm.root, MODEL, say=say)
    original = swarm.spec_path.read_text(encoding="utf-8")
    marks: dict[str, float] = {}
    load = _rollout_load(swarm)

    def on_step(name: str, event: str, at: float) -> None:
        marks.setdefault(f"{name}:{event}", at)
        if event == "start":
            load.handover()

    try:
        with pytest.raises(RolloutError) as raised:
            swarm_rollout(
                context,
                RolloutRequest(
                    MODEL,
                    version=3,
                    source=str(candidate),
                    traffic=CANARY_TRAFFIC,
                    analysis_s=CANARY_WINDOW_S,
                    latency_factor=1000.0,  # past the side instance: the canary's gates judge
                ),
                on_step=on_step,
            )
        time.sleep(2)
    finally:
        report = load.stop()
    print(f"\nswarm slow canary: {raised.value.message}; load: {report.summary()}", flush=True)
    assert "traffic_25" in str(raised.value) and "rolled back" in raised.value.message
    assert "p99" in str(raised.value)
    assert "traffic_100:start" not in marks
    assert report.failures == [], report.summary()
    slow = [s for s in report.samples if s.value == 3.5]
    assert slow and all(s.sent_at >= marks["traffic_25:start"] for s in slow)
    assert swarm.spec_path.read_text(encoding="utf-8") == original
    assert _canary_leftovers(swarm) == []
    journal = read_journal(swarm.root, PROJECT, MODEL)
    assert journal is not None and journal.status == "failed"
    assert swarm_up(swarm.spec_path, swarm.root, timeout=120).action == "noop"


# ----------------------------------------------------------------------------- model images


def _node_model_tags(node: str, repository: str) -> set[str]:
    """The model image tags (by content label) of ``repository`` in a node's engine."""
    engine = ["docker", "exec", node, "docker", "image"]
    ids = subprocess.run(
        [*engine, "ls", "--quiet", "--filter", "label=org.tfstack.role=model-image"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return set()
    inspected = subprocess.run(
        [*engine, "inspect", *sorted(set(ids))], capture_output=True, text=True, check=True
    ).stdout
    return {
        model_image_tag(image.models_digest)
        for image in parse_engine_images(inspected)
        if any(same_repository(reference_repository(r), repository) for r in image.references)
    }


def _tags(repository: str) -> set[str]:
    return {
        line.split(":")[-1]
        for line in _docker_lines("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository)
    }


def test_up_prunes_older_model_images_and_nothing_else(swarm: SwarmStack) -> None:
    """The rollout and rollback above deployed at least 3 model images; after each up only the
    current tag and one previous remain, under the local and the pushed name. A noop up keeps an
    unlabelled image in the project's repository and another project's model image."""
    repository = model_repository_name(PROJECT)
    pushed = f"{LOCAL_PUSH_REGISTRY}/{repository}"
    revision = swarm.manager.run(
        "service",
        "inspect",
        "--format",
        f'{{{{index .Spec.Labels "{LABEL_REVISION}"}}}}',
        f"{swarm.stack}_models",
    )
    current = model_image_tag(revision)
    other = f"{model_repository_name(PROJECT + '-other')}:{current}"
    unlabelled = f"{repository}:not-a-model-image"
    subprocess.run(["docker", "tag", f"{repository}:{current}", other], check=True)
    subprocess.run(["docker", "tag", "tfstack/frontend:latest", unlabelled], check=True)
    try:
        assert swarm_up(swarm.spec_path, swarm.root, timeout=120).action == "noop"
        local, remote = _tags(repository), _tags(pushed)
        print(f"\nswarm: model image tags after the rollout: {sorted(local)}", flush=True)
        assert current in local and current in remote
        assert len(local - {"not-a-model-image"}) <= 2, local
        assert len(remote) <= 2, remote
        assert "not-a-model-image" in local
        assert _docker_lines("image", "ls", "--quiet", other)
        # The registry (manifests deleted, then garbage collected) and every node's engine.
        listing = f"http://{LOCAL_PUSH_REGISTRY}/v2/{repository}/tags/list"
        with urllib.request.urlopen(listing, timeout=10) as answer:
            in_registry = set(json.load(answer).get("tags") or [])
        on_nodes = {node: _node_model_tags(node, repository) for node in node_containers()}
        print(f"swarm: registry {sorted(in_registry)}, nodes {on_nodes}", flush=True)
        assert current in in_registry and len(in_registry) <= 2, in_registry
        assert len(on_nodes) == 3
        for node, tags in on_nodes.items():
            assert current in tags and len(tags) <= 2, (node, tags)
    finally:
        subprocess.run(
            ["docker", "image", "rm", other, unlabelled], check=False, capture_output=True
        )


# ----------------------------------------------------------------------------- interrupted rollout


def _rollout_killed_in(swarm: SwarmStack, step: str, version: int, source: Path) -> None:
    """``invoke rollout --target swarm`` in its own process, killed (SIGKILL) half way into
    ``step``; the journal then says interrupted at that step."""
    command = [
        sys.executable,
        "-m",
        "invoke",
        "rollout",
        "--target",
        "swarm",
        "--spec",
        str(swarm.spec_path),
        "--model",
        MODEL,
        "--version",
        str(version),
        "--source",
        str(source),
    ]
    log = swarm.root / f"rollout-killed-{step}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                journal = read_journal(swarm.root, PROJECT, MODEL)
                # This process's journal (an earlier one may have stopped in the same step).
                ours = journal is not None and journal.pid == process.pid
                record = journal.record(step) if ours and journal is not None else None
                if record is not None and record.status == "running":
                    break
                assert process.poll() is None, log.read_text(errors="replace")
                time.sleep(0.2)
            else:
                pytest.fail(f"step {step} never started:\n{log.read_text(errors='replace')}")
            time.sleep(2.0)  # inside the step's deploy and wait
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    summary = status_summary(swarm.root, PROJECT)
    assert summary is not None, "no rollout journal"
    assert (summary[MODEL]["state"], summary[MODEL]["step"]) == ("interrupted", step)


def test_rollout_interrupted_half_way_is_aborted_then_resumed(
    swarm: SwarmStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A `rollout --target swarm` killed in its load step: `--abort` puts the spec and the Swarm
    back (a following up is a noop); killed again, `--resume` finishes it (stable -> 3), and a
    rollback returns to version 1. 50 req/s REST+gRPC through the door: 0 failed."""
    candidate = tmp_path_factory.mktemp("swarm-interrupted") / "v3"
    write_half_plus(candidate, offset=3.0, offset2=4.0, model_name=MODEL)
    for path in [candidate, *candidate.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    context = Context(swarm.spec_path, swarm.root, MODEL, say=say)
    original = swarm.spec_path.read_text(encoding="utf-8")
    started = time.monotonic()
    load = _stack_load(swarm, 115).start()
    try:
        _rollout_killed_in(swarm, "load", 3, candidate)
        aborted = swarm_rollout(context, RolloutRequest(MODEL), abort=True)
        assert aborted.journal.status == "aborted"
        assert swarm.spec_path.read_text(encoding="utf-8") == original
        assert swarm_up(swarm.spec_path, swarm.root, timeout=120).action == "noop"
    finally:
        abort_load = load.stop()
    abort_s = time.monotonic() - started
    started = time.monotonic()
    load = _stack_load(swarm, 115).start()
    try:
        _rollout_killed_in(swarm, "load", 3, candidate)
        resumed = swarm_rollout(context, RolloutRequest(MODEL), resume=True)
        assert resumed.journal.status == "done"
        spec = load_spec(swarm.spec_path)
        assert next(m for m in spec.models if m.name == MODEL).labels == {"stable": 3}
        time.sleep(2)
        assert 3.5 in load.report.values("rest/stable")
        swarm_rollback(context)
    finally:
        resume_load = load.stop()
    resume_s = time.monotonic() - started
    print(
        f"\nswarm interrupted rollout: abort {abort_s:.1f}s ({abort_load.summary()}); resume and "
        f"rollback {resume_s:.1f}s ({resume_load.summary()})",
        flush=True,
    )
    assert abort_load.failures == [], abort_load.summary()
    assert resume_load.failures == [], resume_load.summary()
    assert 3.5 not in abort_load.values("rest/stable")
    spec = load_spec(swarm.spec_path)
    assert next(m for m in spec.models if m.name == MODEL).labels == {"stable": 1}


# ----------------------------------------------------------------------------- failover


def _serving_running(swarm: SwarmStack, names: dict[str, str]) -> list[str]:
    """Nodes of the serving tasks that should run and do."""
    serving = service_ids(swarm.manager, swarm.stack).get(SERVING_SERVICE, "?")
    return [
        t.node
        for t in tasks(swarm.manager, swarm.stack, names)
        if t.service.startswith(serving) and t.desired == "running" and t.state == "running"
    ]


def test_worker_node_killed_under_load_fails_over(swarm: SwarmStack) -> None:
    """Kill a worker's container under 50 req/s REST: its task runs elsewhere within 30 s, the
    door routes around it and no request fails (the ones that met the dead node are retried:
    counted as slow); where the replacement's time went is printed."""
    names = {n.id: n.hostname for n in nodes(swarm.manager)}
    assert KILLED_NODE in _serving_running(swarm, names)
    senders = stack_senders(
        "half_plus_two",
        rest_url=f"http://127.0.0.1:{swarm.rest_port}",
        grpc_target=f"127.0.0.1:{swarm.grpc_port}",
        body={"instances": [1.0]},
        labels=("stable",),
        transports=("rest",),
    )
    load = LoadGenerator(senders, rate=50, max_seconds=RECOVERY_LIMIT_S - 10)
    load.start()
    recovered_s: float | None = None
    down_s: float | None = None
    killed_wall = time.time()
    try:
        time.sleep(5)
        killed_at, killed_wall = time.monotonic(), time.time()
        subprocess.run(["docker", "kill", KILLED_NODE], check=True, capture_output=True)
        while time.monotonic() - killed_at < RECOVERY_LIMIT_S - 20:
            if down_s is None and KILLED_NODE in {
                n.hostname for n in nodes(swarm.manager) if n.state == "down"
            }:
                down_s = time.monotonic() - killed_at
            placed = _serving_running(swarm, names)
            if len(placed) == REPLICAS and KILLED_NODE not in placed:
                recovered_s = time.monotonic() - killed_at
                break
            time.sleep(1)
        time.sleep(5)  # load on the recovered layout
    finally:
        report: LoadReport = load.stop()
    timeline = replacements(swarm.manager, swarm.stack, names, killed_wall) if recovered_s else []
    after_kill = report.window(start=killed_at)
    slow = [s.sent_at - killed_at for s in after_kill if s.latency_s > SLOW_S]
    print(
        f"\nswarm failover: {len(report.failures)} failed of {report.total}; "
        f"{len(slow)} slower than {SLOW_S:g} s, sent at +{', +'.join(f'{x:.1f}' for x in slow)} s "
        f"after the kill; node down after {down_s}s; {REPLICAS} tasks running again after "
        f"{recovered_s}s; "
        f"load: {report.summary()}\n" + "\n".join(r.describe() for r in timeline),
        flush=True,
    )
    assert recovered_s is not None, f"no replacement task within {RECOVERY_LIMIT_S - 20:.0f} s"
    assert len(after_kill) > 100
    assert all(s.ok for s in report.window(end=killed_at)), report.summary()
    assert report.failures == [], report.summary()
    assert recovered_s <= REPLACEMENT_LIMIT_S, "\n".join(r.describe() for r in timeline)
    assert {s.value for s in report.samples if s.ok} == {2.5}


# ----------------------------------------------------------------------------- down


def test_down_then_cluster_down_leave_nothing(swarm: SwarmStack) -> None:
    """down --target swarm leaves no service, config, container, network or volume on any node;
    cluster.down leaves no node, registry, volume or network on the host."""
    removed = swarm_down(swarm.spec_path, swarm.root)
    assert f"service {swarm.stack}_serving" in removed
    selector = f"label={STACK_LABEL}={swarm.stack}"
    assert not swarm.manager.run("service", "ls", "--quiet", "--filter", selector)
    assert not swarm.manager.run("config", "ls", "--quiet", "--filter", selector)
    live = [n for n, state in cluster_status().containers.items() if state == "running"]
    assert len(live) == 3  # the registry and the two nodes still running
    for node in live:
        if node == "registry":
            continue
        for kind in ("ps --all", "volume ls", "network ls"):
            left = _docker_lines(
                "exec", node, "docker", *kind.split(), "--quiet", "--filter", selector
            )
            assert left == [], f"{node}: {kind} still lists {left}"
    cluster_down()
    cluster_selector = f"label={CLUSTER_LABEL}={CLUSTER_NAME}"
    for kind in ("ps --all", "volume ls", "network ls"):
        left = _docker_lines(*kind.split(), "--quiet", "--filter", cluster_selector)
        assert left == [], f"host: {kind} still lists {left}"
    assert not cluster_status().exists
