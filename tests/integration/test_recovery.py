"""Crash recovery in real containers: a server killed under load comes back by its restart policy.

The server process is killed with SIGKILL from the host (``kill -9`` of its host pid), which is
what the OOM killer or a crash does. ``docker kill`` is not used: the engine records it as a
stop on purpose and an ``unless-stopped`` policy leaves the container down, like ``docker stop``.
The engine-restart case (dockerd restarted under a running stack) is not run here: restarting the
host's engine mid-suite would take every other test's containers with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tfstack.bench.rollout import RolloutScenario, write_candidates
from tfstack.build.images import BuiltImage
from tfstack.docker.compose import COMPOSE_PROJECT_LABEL
from tfstack.stack.plan import UpAction

pytestmark = pytest.mark.integration

RECOVERY_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def scenario(
    docker_client: docker.DockerClient, runtime_image: BuiltImage
) -> Iterator[RolloutScenario]:
    """half_plus_two v1 served by a throw-away project on free loopback ports."""
    repository, tag = "tfstack-it/recovery", secrets.token_hex(4)
    docker_client.images.get(runtime_image.id).tag(repository, tag)
    with tempfile.TemporaryDirectory(prefix="tfstack-recovery-models-") as tmp:
        made = RolloutScenario(docker_client, f"{repository}:{tag}", write_candidates(Path(tmp)))
        try:
            made.up()
            yield made
        finally:
            made.down()
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(f"{repository}:{tag}", noprune=True)


def serving_container(
    client: docker.DockerClient, project: str
) -> docker.models.containers.Container:
    found = client.containers.list(
        all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={project}"}
    )
    assert len(found) == 1
    return found[0]


def test_sigkilled_server_is_back_with_every_model_and_status_says_why(
    scenario: RolloutScenario, docker_client: docker.DockerClient
) -> None:
    """SIGKILL under load: the restart policy brings the server back, every model AVAILABLE,
    status shows one restart and `killed by SIGKILL`, and the next `up` is a no-op."""
    before = serving_container(docker_client, scenario.project)
    generator = scenario.load(max_seconds=RECOVERY_TIMEOUT_S, rate=20).start()
    try:
        time.sleep(2.0)
        os.kill(int(before.attrs["State"]["Pid"]), signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + RECOVERY_TIMEOUT_S
        status = scenario.lifecycle().status()
        while time.monotonic() < deadline and not (status.ok and status.services[0].restart_count):
            time.sleep(1.0)
            status = scenario.lifecycle().status()
        recovered_at = time.monotonic()
        time.sleep(5.0)  # load keeps going: the server answers again
    finally:
        report = generator.stop()
    assert status.ok, status.to_json()
    service = status.services[0]
    assert service.container_id == before.id, "the same container, restarted (not recreated)"
    assert service.restart_count == 1
    assert service.last_exit is not None
    assert (service.last_exit.code, service.last_exit.reason) == (137, "killed by SIGKILL")
    assert all(model.ok for model in status.models)
    # Back means answering on every protocol: status reads REST, and a gRPC channel that saw the
    # port reset retries after its own backoff, so its first answer may come a moment later.
    for target in {sample.target for sample in report.samples}:
        first_ok = min(
            (
                s.sent_at
                for s in report.samples
                if s.target == target and s.ok and s.sent_at > killed_at
            ),
            default=None,
        )
        assert first_ok is not None, f"{target} never answered after the kill"
        assert first_ok - recovered_at < 10.0, (
            f"{target} answered {first_ok - recovered_at:.1f} s late"
        )
        recovered_at = max(recovered_at, first_ok)
    after = [s for s in report.samples if s.sent_at > recovered_at]
    assert after and all(s.ok for s in after), [s.error for s in after if not s.ok][:3]
    assert any(s.ok for s in report.samples if s.sent_at < killed_at)
    again = scenario.lifecycle().up(timeout=60)
    assert again.plan.action is UpAction.NOOP, again.plan.describe()


def test_docker_stop_stays_stopped(
    scenario: RolloutScenario, docker_client: docker.DockerClient
) -> None:
    """A stop on purpose is honoured: unless-stopped does not restart it; `up` starts it again."""
    container = serving_container(docker_client, scenario.project)
    container.stop(timeout=15)
    time.sleep(3.0)
    container.reload()
    assert container.status == "exited"
    report = scenario.lifecycle().up(timeout=120)
    assert report.plan.action is UpAction.START
    assert report.status.ok
