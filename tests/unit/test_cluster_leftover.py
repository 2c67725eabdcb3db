"""A local cluster knows who made it: a killed run's leftover is removed, a user's never is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tfstack.cluster import apply
from tfstack.cluster.apply import (
    ClusterError,
    ClusterStatus,
    process_alive,
    remove_leftover_cluster,
    this_process,
)
from tfstack.cluster.plan import (
    MADE_BY_LABEL,
    MADE_BY_USER,
    MAKER_PROCESS_LABEL,
    ClusterOptions,
    plan_cluster,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_every_container_carries_who_made_it() -> None:
    plan = plan_cluster(
        ClusterOptions(nodes=2, made_by="tests", maker_process="boot:42", node_image="n")
    )
    for argv in [plan.registry_run, *[node.run for node in plan.nodes]]:
        assert f"--label={MADE_BY_LABEL}=tests" in argv
        assert f"--label={MAKER_PROCESS_LABEL}=boot:42" in argv


def test_a_users_cluster_has_no_maker_process() -> None:
    plan = plan_cluster(ClusterOptions(nodes=1))
    assert f"--label={MADE_BY_LABEL}={MADE_BY_USER}" in plan.nodes[0].run
    assert not any(MAKER_PROCESS_LABEL in flag for flag in plan.nodes[0].run)


def test_process_alive_knows_this_process_a_dead_one_and_another_boot() -> None:
    me = this_process()
    assert me.endswith(f":{os.getpid()}")
    assert process_alive(me)
    boot = me.rpartition(":")[0]
    assert not process_alive(f"{boot}:{_dead_pid()}")
    assert not process_alive(f"another-boot:{os.getpid()}")
    assert not process_alive("")


def _existing(made_by: str, maker: str) -> ClusterStatus:
    return ClusterStatus(
        "tfstack", containers={"tfstack-node-1": "exited"}, made_by=made_by, maker_process=maker
    )


@pytest.fixture
def downs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    removed: list[str] = []
    monkeypatch.setattr(apply, "cluster_down", lambda name: removed.append(name) or [])
    return removed


def test_a_killed_runs_cluster_is_removed(
    monkeypatch: pytest.MonkeyPatch, downs: list[str]
) -> None:
    boot = this_process().rpartition(":")[0]
    gone = _existing("tests", f"{boot}:{_dead_pid()}")
    monkeypatch.setattr(apply, "cluster_status", lambda name: gone)
    said: list[str] = []
    assert remove_leftover_cluster(say=said.append)
    assert downs == ["tfstack"]
    assert "a tests run made it and is gone" in said[0]


def test_no_cluster_nothing_to_do(monkeypatch: pytest.MonkeyPatch, downs: list[str]) -> None:
    monkeypatch.setattr(apply, "cluster_status", ClusterStatus)
    assert not remove_leftover_cluster()
    assert downs == []


@pytest.mark.parametrize(
    ("made_by", "live", "words"),
    [
        (MADE_BY_USER, False, "a user's cluster"),
        ("", False, "an older tfstack"),
        ("bench", True, "a bench run that is still running"),
    ],
)
def test_a_users_an_unlabelled_or_a_live_runs_cluster_is_refused_and_kept(
    monkeypatch: pytest.MonkeyPatch, downs: list[str], made_by: str, live: bool, words: str
) -> None:
    maker = this_process() if live else ""
    monkeypatch.setattr(apply, "cluster_status", lambda name: _existing(made_by, maker))
    with pytest.raises(ClusterError) as caught:
        remove_leftover_cluster()
    assert words in str(caught.value)
    assert caught.value.hint
    assert downs == []
