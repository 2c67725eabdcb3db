"""``invoke bench swarm``: the Swarm target end to end on a local 3-node cluster (issue #13).

One run, everything made here and removed at the end (stack, cluster, temporary project and image
tag), even on failure. Refused when a local cluster already exists (its ports are fixed: there is
one per machine). A temporary project on free loopback ports serves half_plus_two version 1
(``stable`` -> 1) with 3 replicas, at most 2 per node, and measures in this order:

1. ``cluster.up --nodes 3`` (node and registry images present, as after a first ``cluster.up``);
2. the first ``up --target swarm`` (push to the empty registry, every node pulling, every task
   serving every declared version, smoke requests through the door);
3. a second ``up`` with nothing changed (must be a noop);
4. closed-loop throughput through the door with 3 replicas (REST and gRPC);
5. a rollout of version 2 under 50 req/s REST+gRPC through the door (failed requests);
6. a worker node's container killed under 50 req/s REST: failed requests, how long after the kill
   the door still sent requests into the dead node (slow or failed answers), when Swarm declared
   the node down, and the replacement's timeline (task created, container started, healthy,
   running, in the door's REST and gRPC rotation as its runtime API reports it);
7. scale to 1 replica, then the same throughput load: the ratio 3 / 1 measured in this run.

All load is bounded and on 127.0.0.1. The three nodes share this machine's cores: the 3-vs-1 ratio
is reported, never promised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import yaml

from tfstack.bench.loadgen import LoadGenerator, LoadReport, stack_senders
from tfstack.bench.rollout import free_port
from tfstack.bench.runner import BenchContext, BenchResult, benchmark
from tfstack.bench.serve_load import LoadResult, LoadSpec, run_load
from tfstack.bench.serve_reference import SMALL_BODY, grpc_predict_bytes
from tfstack.build.frontend import ensure_frontend_image
from tfstack.build.images import ensure_image
from tfstack.build.modelimage import model_repository_name
from tfstack.cluster import cluster_down, cluster_up, remove_leftover_cluster
from tfstack.cluster.plan import CLUSTER_NAME, node_name
from tfstack.docker.engine import ensure_engine
from tfstack.errors import StackError
from tfstack.models.demo import write_half_plus
from tfstack.render.frontdoor import SERVING_SERVICE
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.runner import Context
from tfstack.spec import load_spec
from tfstack.spec.deploy import LOCAL_PUSH_REGISTRY
from tfstack.spec.frontend import FRONTEND_IMAGE
from tfstack.stack.swarm import (
    Manager,
    manager_url,
    nodes,
    service_ids,
    swarm_down,
    swarm_up,
    tasks,
)
from tfstack.stack.swarm_canary import door_status, swarm_door
from tfstack.stack.swarm_rollout import swarm_rollout

MODEL = "half_plus_two"
REPLICAS = 3
PER_NODE = 2  # room for the killed node's task on the two others
PROJECT_PREFIX = "tfstack-bench-swarm-"  # + a random suffix per run
KILLED_NODE = node_name(CLUSTER_NAME, 3)  # a worker: node 1 is the manager and runs the door
UP_TIMEOUT_S = 420.0
RATE = 50.0
RECOVERY_LIMIT_S = 90.0
SLOW_S = 0.5  # an answer this slow after the kill met the dead node (connect timeout 1 s)
THROUGHPUT_S = 8.0
REST_CONNECTIONS = 8
GRPC_CONCURRENCY = 16
PATH = f"/v1/models/{MODEL}:predict"
GRPC_BODY = grpc_predict_bytes(MODEL, "x", [1.0, 2.0, 5.0], "float32")
REPLACEMENT_TARGET_S = 30.0
REST_TIMEOUT_MS = 5000


def spec_data(*, project: str, image: str, rest_port: int, grpc_port: int) -> dict[str, Any]:
    """The bench project's spec (half_plus_two v1, ``stable`` -> 1, 3 replicas on the Swarm)."""
    return {
        "format": 1,
        "project": project,
        "model_repository": "../models",
        "models": [
            {
                "name": MODEL,
                "policy": {"specific": [1]},
                "labels": {"stable": 1},
                "samples": [{"name": "predict", "body": {"instances": [1.0, 2.0, 5.0]}}],
            }
        ],
        "serving": {
            "image": image,
            "grpc_port": grpc_port,
            "rest_port": rest_port,
            "replicas": REPLICAS,
            "max_load_retries": 0,
            # The door retries a request a vanished node left unanswered after this + 1 s, which
            # must be below the load generator's 10 s client timeout (docs/swarm.md, node failure;
            # the integration tier sets the same).
            "rest_api_timeout_ms": REST_TIMEOUT_MS,
        },
        "monitoring": {"enabled": False},
        "deploy": {"target": "swarm", "swarm": {"max_replicas_per_node": PER_NODE}},
    }


def _node_docker(node: str) -> list[str]:
    return ["docker", "exec", node, "docker"]


def parse_timestamp(text: str) -> float:
    """An engine timestamp (RFC 3339, nanoseconds, ``Z``) as seconds since the epoch (pure)."""
    head, _, rest = text.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())[:6] or "0"
    moment = datetime.strptime(head.rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return moment.timestamp() + float(f"0.{fraction}")


@dataclass(frozen=True)
class Replacement:
    """Where a replacement task's time went, in seconds after the kill."""

    node: str
    created_s: float  # Swarm's orchestrator made the task (node declared down + restart delay)
    started_s: float | None  # its container started on the node
    healthy_s: float | None  # its first passing health check ended
    running_s: float  # Swarm reported the task running (= healthy, with a health check)
    address: str = ""  # on the overlay
    door_s: float | None = None  # in the door's rotation, REST and gRPC (bench only)

    def describe(self) -> str:
        def at(value: float | None) -> str:
            return "?" if value is None else f"{value:.1f}s"

        door = f", in the door's rotation {at(self.door_s)}" if self.address else ""
        return (
            f"replacement on {self.node}: task created {at(self.created_s)}, container started "
            f"{at(self.started_s)}, healthy {at(self.healthy_s)}, running {at(self.running_s)}"
            + door
        )


class DoorWatch:
    """The door's servers in rotation, read from its runtime API twice a second during a
    failover (wall time -> (backend, ip) pairs), to time when a replacement joins it."""

    def __init__(self, manager: Manager, stack: str) -> None:
        self.manager = manager
        self.stack = stack
        self.seen: list[tuple[float, frozenset[tuple[str, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="door-watch", daemon=True)

    def _poll(self) -> None:
        with contextlib.suppress(StackError):
            door = swarm_door(self.manager, self.stack)
            while not self._stop.is_set():
                status = door_status(door, {})
                self.seen.append(
                    (
                        time.time(),
                        frozenset(
                            (s.backend, s.address.rsplit(":", 1)[0])
                            for s in status.servers
                            if s.in_rotation
                        ),
                    )
                )
                self._stop.wait(0.5)

    def __enter__(self) -> DoorWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)

    def joined(self, address: str, after_wall: float) -> float | None:
        """When (wall) ``address`` was first in both the REST and the gRPC rotation."""
        for at, pairs in self.seen:
            if at >= after_wall and {("rest", address), ("grpc", address)} <= pairs:
                return at
        return None


def replacements(
    manager: Manager, stack: str, names: Mapping[str, str], killed_wall: float
) -> list[Replacement]:
    """The serving tasks created after the kill that run now, with their timeline."""
    serving = service_ids(manager, stack).get(SERVING_SERVICE, "?")
    ids = [
        t.id
        for t in tasks(manager, stack, names)
        if t.service.startswith(serving) and t.state == "running"
    ]
    found = []
    for item in json.loads(manager.run("inspect", "--type", "task", *ids) if ids else "[]"):
        created = parse_timestamp(item["CreatedAt"]) - killed_wall
        if created < 0:
            continue
        node = names.get(item.get("NodeID", ""), "?")
        container = item["Status"].get("ContainerStatus", {}).get("ContainerID", "")
        started = healthy = None
        with contextlib.suppress(OSError, ValueError, KeyError, subprocess.SubprocessError):
            state = json.loads(
                subprocess.run(
                    [*_node_docker(node), "inspect", "--format", "{{json .State}}", container],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                ).stdout
            )
            started = parse_timestamp(state["StartedAt"]) - killed_wall
            passed = [c for c in (state.get("Health") or {}).get("Log") or [] if c["ExitCode"] == 0]
            if passed:
                healthy = parse_timestamp(passed[0]["End"]) - killed_wall
        running = parse_timestamp(item["Status"]["Timestamp"]) - killed_wall
        address = next(
            (
                a.split("/")[0]
                for attachment in item.get("NetworksAttachments") or []
                if not attachment.get("Network", {}).get("Spec", {}).get("Ingress")
                for a in attachment.get("Addresses") or []
            ),
            "",
        )
        found.append(Replacement(node, created, started, healthy, running, address))
    return found


@dataclass
class Failover:
    """What a killed worker node cost: requests, the door's reaction, Swarm's replacement."""

    load: LoadReport
    killed_at: float
    node_down_s: float | None
    replaced_s: float | None
    timeline: list[Replacement]

    @property
    def door_s(self) -> float:
        """When, in seconds after the kill, the last request was sent that failed or answered
        slowly (it met a dead address and was retried); 0 when none was."""
        hit = [
            s.sent_at - self.killed_at
            for s in self.load.window(start=self.killed_at)
            if not s.ok or s.latency_s > SLOW_S
        ]
        return max(hit, default=0.0)

    @property
    def slow(self) -> int:
        return len([s for s in self.load.window(start=self.killed_at) if s.latency_s > SLOW_S])


def _open_up(path: Path) -> None:
    """The server runs as uid 1000: every directory and file must be readable by it."""
    for item in [path, *path.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)


def _write_project(root: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """config/stack.yaml and models/half_plus_two/1 under ``root``; the candidate (v2) beside."""
    write_half_plus(root / "models" / MODEL / "1", offset=2.0, offset2=3.0, model_name=MODEL)
    candidate = root / "candidate" / "2"
    write_half_plus(candidate, offset=3.0, offset2=4.0, model_name=MODEL)
    (root / "config").mkdir()
    spec_path = root / "config" / "stack.yaml"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    _open_up(root)
    return spec_path, candidate


def _throughput(rest_port: int, grpc_port: int) -> tuple[LoadResult, LoadResult]:
    rest = LoadSpec(
        "rest",
        rest_port,
        SMALL_BODY,
        PATH,
        concurrency=REST_CONNECTIONS,
        seconds=THROUGHPUT_S,
    )
    grpc = LoadSpec(
        "grpc", grpc_port, GRPC_BODY, concurrency=GRPC_CONCURRENCY, seconds=THROUGHPUT_S
    )
    return run_load(rest), run_load(grpc)


def _load(rest_port: int, grpc_port: int, seconds: float, transports: tuple[str, ...]) -> Any:
    senders = stack_senders(
        MODEL,
        rest_url=f"http://127.0.0.1:{rest_port}",
        grpc_target=f"127.0.0.1:{grpc_port}",
        body={"instances": [1.0]},
        labels=("stable",),
        transports=transports,
    )
    return LoadGenerator(senders, rate=RATE, max_seconds=seconds)


def _serving_nodes(manager: Manager, stack: str, names: dict[str, str]) -> list[str]:
    serving = service_ids(manager, stack).get(SERVING_SERVICE, "?")
    return [
        t.node
        for t in tasks(manager, stack, names)
        if t.service.startswith(serving) and t.desired == "running" and t.state == "running"
    ]


def _failover(manager: Manager, stack: str, rest_port: int, grpc_port: int) -> Failover:
    """Kill the worker node under 50 req/s REST; watch Swarm replace its task."""
    names = {n.id: n.hostname for n in nodes(manager)}
    if KILLED_NODE not in _serving_nodes(manager, stack, names):
        raise StackError(f"no serving task on {KILLED_NODE} to lose: the spread is off")
    load = _load(rest_port, grpc_port, RECOVERY_LIMIT_S + 15, ("rest",)).start()
    node_down_s: float | None = None
    replaced_s: float | None = None
    killed_at = time.monotonic()
    killed_wall = time.time()
    try:
        with DoorWatch(manager, stack) as door:
            time.sleep(5)
            killed_at, killed_wall = time.monotonic(), time.time()
            subprocess.run(["docker", "kill", KILLED_NODE], check=True, capture_output=True)
            while time.monotonic() - killed_at < RECOVERY_LIMIT_S:
                if node_down_s is None and KILLED_NODE in {
                    n.hostname for n in nodes(manager) if n.state == "down"
                }:
                    node_down_s = time.monotonic() - killed_at
                placed = _serving_nodes(manager, stack, names)
                if len(placed) == REPLICAS and KILLED_NODE not in placed:
                    replaced_s = time.monotonic() - killed_at
                    break
                time.sleep(0.5)
            time.sleep(5)  # load on the recovered layout (and the door's view of it)
    finally:
        report: LoadReport = load.stop()
    timeline = replacements(manager, stack, names, killed_wall) if replaced_s is not None else []
    timeline = [
        dataclasses.replace(r, door_s=_after(door.joined(r.address, killed_wall), killed_wall))
        for r in timeline
    ]
    return Failover(report, killed_at, node_down_s, replaced_s, timeline)


def remove_run_images(
    client: Any, run_repositories: Collection[str], pushed_repositories: Collection[str] = ()
) -> list[str]:
    """Remove the image tags a run on the local cluster left on this engine; the tags removed.

    ``run_repositories`` (glob patterns: the run's serving image and model images) go under
    their own name and with the local registry's push prefix; ``pushed_repositories`` (images
    the user keeps, such as the door's) only with the prefix. A tag that was an image's last
    is the image's removal: a push tag kept a whole serving image (1.3 GB) after every run, and
    with the cluster gone it names a registry that no longer exists. An image a container still
    uses stays."""
    prefix = f"{LOCAL_PUSH_REGISTRY}/"
    patterns = [
        *run_repositories,
        *[prefix + pattern for pattern in [*run_repositories, *pushed_repositories]],
    ]
    removed: list[str] = []
    for image in client.images.list():
        for ref in image.tags:
            repository = ref.rpartition(":")[0]
            if any(fnmatch.fnmatchcase(repository, pattern) for pattern in patterns):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(ref)
                    removed.append(ref)
    return removed


def _after(wall: float | None, start: float) -> float | None:
    return None if wall is None else wall - start


def _seconds(value: float | None) -> str:
    return "not within the limit" if value is None else f"{value:.1f} s"


def _placement(per_node: Mapping[str, int]) -> str:
    door = node_name(CLUSTER_NAME, 1)
    return ", ".join(
        f"{node}{' (door)' if node == door else ''}: {count}"
        for node, count in sorted(per_node.items())
    )


def _rps(result: LoadResult) -> str:
    errors = f", {result.errors} errors" if result.errors else ""
    return f"{result.rps:,.0f} req/s (p50 {result.percentile(0.5):.1f} ms{errors})"


def _ratio(three: LoadResult, one: LoadResult) -> str:
    return f"{three.rps / one.rps:.2f}x" if one.rps else "n/a"


@benchmark(
    "swarm",
    "local 3-node Swarm: cluster up, first deploy, no-change up, rollout, node failover, "
    "3 vs 1 replicas through the door",
    default_runs=1,
)
def bench_swarm(context: BenchContext) -> BenchResult:
    """Issue #13's figures, measured in one run on a cluster made and removed here."""
    say = context.say
    client = ensure_engine(say=say)
    remove_leftover_cluster(say=say)  # a killed run's; a user's or a live run's is refused
    demo = load_spec(context.root / "config" / "stack.yaml")
    say("making sure the serving and frontend images exist (not timed)")
    ensure_image(client, demo.serving.image, source_root=context.root, say=say)
    ensure_frontend_image(client, FRONTEND_IMAGE, source_root=context.root, say=say)
    tag = f"tfstack-bench/swarm:{secrets.token_hex(4)}"
    client.images.get(demo.serving.image).tag(*tag.split(":"))
    root = Path(tempfile.mkdtemp(prefix="tfstack-bench-swarm-"))
    root.chmod(0o755)
    rest_port, grpc_port = free_port(), free_port()
    project = f"{PROJECT_PREFIX}{secrets.token_hex(3)}"
    data = spec_data(project=project, image=tag, rest_port=rest_port, grpc_port=grpc_port)
    spec_path: Path | None = None
    try:
        spec_path, candidate = _write_project(root, data)
        mark = time.monotonic()
        cluster_up(3, published_ports=(grpc_port, rest_port), made_by="bench", say=say)
        cluster_s = time.monotonic() - mark
        say(f"cluster.up: {cluster_s:.1f} s")
        mark = time.monotonic()
        first = swarm_up(spec_path, root, timeout=UP_TIMEOUT_S, say=say)
        first_s = time.monotonic() - mark
        say(f"first up: {first_s:.1f} s")
        mark = time.monotonic()
        again = swarm_up(spec_path, root, timeout=120, say=say)
        noop_s = time.monotonic() - mark
        manager = Manager(manager_url(load_spec(spec_path)))
        say("throughput through the door, 3 replicas")
        rest3, grpc3 = _throughput(rest_port, grpc_port)
        say(f"3 replicas: REST {_rps(rest3)}, gRPC {_rps(grpc3)}")
        say("rollout of version 2 under 50 req/s REST+gRPC")
        rollout_load = _load(rest_port, grpc_port, 115, ("rest", "grpc")).start()
        try:
            mark = time.monotonic()
            outcome = swarm_rollout(
                Context(spec_path, root, MODEL, say=say),
                RolloutRequest(MODEL, version=2, source=str(candidate)),
            )
            rollout_s = time.monotonic() - mark
        finally:
            rollout_report: LoadReport = rollout_load.stop()
        say(f"rollout: {rollout_s:.1f} s, load {rollout_report.summary()}")
        say(f"killing {KILLED_NODE} under 50 req/s REST")
        failover = _failover(manager, first.stack, rest_port, grpc_port)
        say(
            f"failover: {len(failover.load.failures)} failed of {failover.load.total}; node down "
            f"after {_seconds(failover.node_down_s)}, replaced after "
            f"{_seconds(failover.replaced_s)}"
        )
        for replacement in failover.timeline:
            say(replacement.describe())
        say("scaling to 1 replica")
        current = yaml.safe_load(spec_path.read_text(encoding="utf-8"))  # as the rollout left it
        current["serving"]["replicas"] = 1
        spec_path.write_text(yaml.safe_dump(current, sort_keys=False), encoding="utf-8")
        single = swarm_up(spec_path, root, timeout=UP_TIMEOUT_S, say=say)
        rest1, grpc1 = _throughput(rest_port, grpc_port)
        say(f"1 replica: REST {_rps(rest1)}, gRPC {_rps(grpc1)}")
    finally:
        say("removing the stack, the cluster and the temporary project")
        if spec_path is not None:
            with contextlib.suppress(StackError, OSError):
                swarm_down(spec_path, root, timeout=60)
        cluster_down()
        remove_run_images(
            client,
            [tag.partition(":")[0], model_repository_name(PROJECT_PREFIX + "*")],
            [FRONTEND_IMAGE.partition(":")[0]],
        )
        shutil.rmtree(root, ignore_errors=True)
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in first.timings.items())
    failed = len(failover.load.failures)
    rows = [
        ("cluster.up --nodes 3 (images present)", f"{cluster_s:.1f} s"),
        ("first up --target swarm (empty registry)", f"{first_s:.1f} s ({steps})"),
        ("second up, nothing changed", f"{noop_s:.1f} s (action {again.action})"),
        (
            "rollout v2 under 50 req/s REST+gRPC",
            f"{rollout_s:.1f} s, {len(rollout_report.failures)} failed of {rollout_report.total}",
        ),
        (
            "worker node killed under 50 req/s REST",
            f"{failed} failed of {failover.load.total}; "
            f"{len(failover.load.window(start=failover.killed_at))} sent after the kill, "
            f"{failover.slow} slower than {SLOW_S:g} s",
        ),
        ("  last request slowed (retried) at", f"{failover.door_s:.1f} s after the kill"),
        ("  Swarm declared the node down after", _seconds(failover.node_down_s)),
        ("  replacement task running after", _seconds(failover.replaced_s)),
        *[("  where the time went", r.describe()) for r in failover.timeline],
        *[
            (f"  failed at +{f.sent_at - failover.killed_at:.1f} s", f"{f.target}: {f.error}")
            for f in failover.load.failures
        ],
        ("serving tasks per node, 3 replicas", _placement(first.per_node)),
        ("serving tasks per node, 1 replica", _placement(single.per_node)),
        ("REST through the door, 3 replicas", _rps(rest3)),
        ("REST through the door, 1 replica", _rps(rest1)),
        ("REST ratio 3 / 1 replicas", _ratio(rest3, rest1)),
        ("gRPC through the door, 3 replicas", _rps(grpc3)),
        ("gRPC through the door, 1 replica", _rps(grpc1)),
        ("gRPC ratio 3 / 1 replicas", _ratio(grpc3, grpc1)),
    ]
    met = (
        again.action == "noop"
        and outcome.journal.status == "done"
        and not rollout_report.failures
        and failed == 0
        and failover.replaced_s is not None
        and failover.replaced_s <= REPLACEMENT_TARGET_S
    )
    return BenchResult(
        name="swarm",
        target="issue #13: 0 failed requests in a rollout and on a node kill, "
        f"replacement task <= {REPLACEMENT_TARGET_S:.0f} s, a noop second up",
        rows=rows,
        met=met,
        notes=[
            "three node containers share this machine's cores: the 3/1 ratio is a measurement, "
            "not a scaling promise",
            f"closed loop through the door: REST {REST_CONNECTIONS} connections, gRPC "
            f"{GRPC_CONCURRENCY} concurrent calls, {THROUGHPUT_S:g} s each; 1 replica measured "
            "after the node kill (2 nodes left)",
        ],
    )
