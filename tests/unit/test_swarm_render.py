"""Swarm target, pure parts: cluster plan, stack file, placement, the task probe parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.specfixtures import Project, valid_spec
from tfstack.cluster.plan import ClusterOptions, plan_cluster, swarm_init_argv
from tfstack.render.frontdoor import frontdoor_values
from tfstack.render.swarm import (
    SwarmImages,
    health_window_s,
    parse_stack_file,
    render_swarm,
    swarm_door_values,
)
from tfstack.spec.load import StackSpec, load_spec
from tfstack.stack.swarm import NodeInfo, SwarmError, check_placement
from tfstack.stack.swarm_probe import parse_probe

IMAGES = SwarmImages("reg:5000/s:id-1", "reg:5000/f:id-2", "reg:5000/m:abc", "abc" * 8)


def test_cluster_plan_labels_publishes_on_loopback_and_nests_cgroups() -> None:
    """Nodes are labelled with their own cgroup parent; only the manager publishes (127.0.0.1)."""
    plan = plan_cluster(
        ClusterOptions(nodes=3, published_ports=(8501,), node_image="n", registry_image="r")
    )
    assert [n.manager for n in plan.nodes] == [True, False, False]
    for node in plan.nodes:
        assert "--label=org.tfstack.role=cluster-node" in node.run
        assert f"--cgroup-parent={node.cgroup_parent}" in node.run
        assert "--privileged" not in node.run
    published = [a for n in plan.nodes for a in n.run if a.startswith("--publish=")]
    assert published and all(a.startswith("--publish=127.0.0.1:") for a in published)
    assert "--label=org.tfstack.role=registry" in plan.registry_run
    with pytest.raises(ValueError, match="nodes"):
        plan_cluster(ClusterOptions(nodes=0))


def test_stack_file_has_the_update_policy_door_and_versioned_configs(tmp_path: Path) -> None:
    """start-first rollback updates monitored over the health window; host-mode door ports."""
    project = Project(tmp_path).with_models()
    data = valid_spec()
    data["serving"]["replicas"] = 3
    data["deploy"] = {"target": "swarm", "swarm": {"max_replicas_per_node": 1}}
    spec = load_spec(project.write(data))
    files = render_swarm(spec, project.spec, tmp_path, IMAGES)
    stack = parse_stack_file(files["compose/stack.yml"])
    serving = stack["services"]["serving"]
    assert serving["deploy"]["replicas"] == 3
    assert serving["deploy"]["endpoint_mode"] == "dnsrr"
    update = serving["deploy"]["update_config"]
    assert (update["order"], update["failure_action"]) == ("start-first", "rollback")
    assert int(update["monitor"].rstrip("s")) >= health_window_s()
    assert serving["deploy"]["placement"]["max_replicas_per_node"] == 1
    assert serving["healthcheck"]["test"][1] == "modelserver-probe"
    door = stack["services"]["frontend"]
    assert {p["mode"] for p in door["ports"]} == {"host"}
    assert stack["services"]["models"]["deploy"]["mode"] == "global"
    assert all(name.startswith("demo-") and len(name) > 12 for name in stack["configs"])
    assert "tasks.serving" in files["compose/swarm/haproxy.cfg"]


def test_cluster_init_shortens_the_dispatcher_heartbeat() -> None:
    """The local Swarm declares a dead node down after ~3 heartbeats: 2 s, not the 5 s default."""
    plan = plan_cluster(ClusterOptions(nodes=2, node_image="n", registry_image="r"))
    assert "--dispatcher-heartbeat=2s" in swarm_init_argv(plan.manager)
    assert "--task-history-limit=1" in swarm_init_argv(plan.manager)


def _default_server(config: str) -> str:
    (line,) = [x for x in config.splitlines() if x.strip().startswith("default-server ")]
    return line


def test_swarm_door_never_reuses_server_connections_and_drops_a_dead_task_at_once(
    tmp_path: Path,
) -> None:
    """A vanished node sends no RST: the Swarm door opens a connection per request (a dead task
    is a connect failure, retried elsewhere after 1 s) and marks a task down on its first
    connection error; the compose door (containers reset their connections) is unchanged."""
    project = Project(tmp_path).with_models()
    data = valid_spec()
    data["serving"]["replicas"] = 3
    data["deploy"] = {"target": "swarm"}
    spec = load_spec(project.write(data))
    door = render_swarm(spec, project.spec, tmp_path, IMAGES)["compose/swarm/haproxy.cfg"]
    defaults = door.split("\ndefaults\n", 1)[1].split("\nresolvers ", 1)[0]
    assert "    option http-server-close\n" in defaults
    assert "    timeout connect 1000ms\n" in defaults
    assert "retry-on conn-failure" in defaults
    assert _default_server(door).endswith(" observe layer4 error-limit 1 on-error mark-down")
    assert "server replica3 tasks.serving:" in door

    compose = frontdoor_values(spec)
    assert compose["connections"] == {"server_close": False, "observe_errors": 0}
    assert compose["timeouts"]["connect"] == "2000ms"
    swarm = swarm_door_values(spec)
    differ = ("connections", "timeouts", "replica", "canary")
    assert {k: v for k, v in swarm.items() if k not in differ} == {
        k: v for k, v in compose.items() if k not in differ
    }
    # The weighted canary's backends find the canary service's task (docs/swarm.md).
    assert swarm["canary"] == {**compose["canary"], "host": "tasks.demo_canary"}
    assert "server canary1 tasks.demo_canary:" in door
    assert "stats socket ipv4@127.0.0.1:" in door


def test_placement_refuses_more_replicas_than_places() -> None:
    """3 replicas at 1 per node on 2 ready nodes is an error naming the service."""
    data = valid_spec()
    data["serving"]["replicas"] = 3
    data["deploy"] = {"swarm": {"max_replicas_per_node": 1}}
    spec = StackSpec.model_validate(data)
    two = [NodeInfo(str(i), f"n{i}", "worker", "ready", "active") for i in range(2)]
    with pytest.raises(SwarmError, match="service serving: 3 replicas"):
        check_placement(spec, two)
    check_placement(spec, [*two, NodeInfo("3", "n3", "worker", "ready", "active")])


def test_probe_output_parses_into_missing_versions() -> None:
    """A task still loading a version, or whose label points elsewhere, is reported as missing
    it; a DNS failure is an error."""
    tasks, error = parse_probe(
        '{"tasks": {"10.0.0.2": {"models": {"m": {"1": "AVAILABLE", "2": "LOADING"}},'
        ' "labels": {"m": {"stable": 1}}}}}'
    )
    assert error is None
    assert tasks[0].missing({"m": [1, 2]}) == ["m v2 LOADING"]
    assert tasks[0].missing({"m": [1]}, {"m": {"stable": 1}}) == []
    assert tasks[0].missing({"m": [1]}, {"m": {"stable": 2, "canary": 2}}) == [
        "m label canary->2 (now unset)",
        "m label stable->2 (now 1)",
    ]
    assert parse_probe('{"error": "tasks.serving does not resolve"}')[1] is not None
