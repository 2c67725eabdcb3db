"""The newcomer contract on every machine state: `git clone … && ./tfstack up` / `./tfstack test`.

Each test starts a fresh machine (tests/fresh/conftest.py) in one of the states a new user really
has, checks the machine is in that state, runs one of the README's two commands from a clean clone
of HEAD, and checks the result from inside the machine. What is shared between states, and why the
contract still holds:

- The venv: `./tfstack`'s bootstrap does not look at Docker, so it runs for real once per session
  (fixture ``bootstrapped``: a fresh clone in a machine with no Docker) and every state's own fresh
  clone gets that venv hard-linked in at the same path.
- The images: each machine's /var/lib/docker starts as a copy of one holding tfstack/debian and
  tfstack/serving-runtime (``docker save | docker load`` from the host engine), as after a first
  `./tfstack images`. Debootstrap and the runtime build are the same on every state, and proven by
  tests/integration; what differs between states, and what these tests prove, is how `up` and
  `test` find, install and start the engine and Compose v2. In the states without any Docker the
  engine is still installed from Debian's mirror by tfstack itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fresh.machines import (
    TIMINGS,
    Bootstrapped,
    Machine,
    Session,
    seeded_docker_dir,
    start_engine,
    start_machine,
    state_clone,
)

pytestmark = pytest.mark.fresh

UP_TIMEOUT_S = 900
TEST_TIMEOUT_S = 900
# One small integration test: it needs the engine, a serving image and Compose-free validation.
SMALL_INTEGRATION_TEST = "test_port_in_use_is_reported_before_starting"
SAMPLE = {"instances": [1.0, 2.0, 5.0]}
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}


@dataclass(frozen=True)
class State:
    """A machine state: which image family, whether the test starts dockerd, what must hold."""

    family: str
    engine_running: bool
    docker_cli: bool
    dockerd: bool
    compose: bool


STATES = {
    "a-no-docker": State("bare", False, docker_cli=False, dockerd=False, compose=False),
    "b-cli-no-engine-no-compose": State(
        "cli", False, docker_cli=True, dockerd=False, compose=False
    ),
    "c-engine-running-no-compose": State(
        "engine", True, docker_cli=True, dockerd=True, compose=False
    ),
    "d-everything": State("full", True, docker_cli=True, dockerd=True, compose=True),
    "e-engine-stopped": State("engine", False, docker_cli=True, dockerd=True, compose=False),
}


def facts(machine: Machine) -> dict[str, bool]:
    """What the machine has, asked the way a user would (PATH, `docker compose`, `docker info`)."""
    checks = {
        "docker_cli": "command -v docker",
        "dockerd": "command -v dockerd",
        "compose": "docker compose version",
        "engine": "docker info",
    }
    return {name: machine.sh(f"{probe} >/dev/null 2>&1")[0] == 0 for name, probe in checks.items()}


def prepare(
    session: Session, template: str, bootstrapped: Bootstrapped, state_id: str, command: str
) -> Machine:
    """A machine in ``state_id`` with its own clone and engine directory, state checked."""
    state = STATES[state_id]
    name = f"{state_id[0]}-{command}"
    clone: Path = state_clone(session, bootstrapped, name)
    machine = start_machine(
        session,
        state.family,
        name,
        clone=clone,
        docker_dir=seeded_docker_dir(session, template, name),
    )
    if state.engine_running:
        start_engine(machine)
    want = {
        "docker_cli": state.docker_cli,
        "dockerd": state.dockerd,
        "compose": state.compose,
        "engine": state.engine_running,
    }
    assert facts(machine) == want, f"machine {name} is not in state {state_id}"
    return machine


def timed(machine: Machine, label: str, argv: list[str], timeout_s: int, **kw: object) -> str:
    started = time.monotonic()
    code, output = machine.run(argv, timeout_s=timeout_s, **kw)  # type: ignore[arg-type]
    TIMINGS.append((machine.name, label, time.monotonic() - started))
    assert code == 0, f"`{' '.join(argv)}` exited {code} in machine {machine.name}:\n{output}"
    return output


PREDICT = (
    "import json, urllib.request; "
    "r = urllib.request.urlopen(urllib.request.Request("
    "'http://127.0.0.1:8501/v1/models/half_plus_two:predict', data=json.dumps({body}).encode(), "
    "headers={{'Content-Type': 'application/json'}}), timeout=30); print(r.read().decode())"
)


@pytest.mark.parametrize("state_id", list(STATES))
def test_up_serves_then_down(
    state_id: str,
    fresh_session: Session,
    engine_template: str,
    bootstrapped: Bootstrapped,
) -> None:
    """`./tfstack up` on a fresh clone serves half_plus_two on 127.0.0.1:8501, and `down` works."""
    machine = prepare(fresh_session, engine_template, bootstrapped, state_id, "up")
    try:
        timed(machine, "./tfstack up", ["./tfstack", "up"], UP_TIMEOUT_S)
        started = time.monotonic()
        code, answer = machine.run(
            ["python3", "-c", PREDICT.format(body=repr(SAMPLE))], timeout_s=60
        )
        TIMINGS.append((machine.name, "REST predict", time.monotonic() - started))
        assert code == 0, f"REST predict inside {machine.name} failed:\n{answer}"
        assert json.loads(answer) == EXPECTED
        after = facts(machine)
        assert after["engine"] and after["compose"], f"up left no engine or Compose: {after}"
        timed(machine, "./tfstack down", ["./tfstack", "down"], 300)
        code, left = machine.sh("docker ps -aq --filter label=org.tfstack.project")
        assert code == 0 and left.strip() == "", f"down left containers: {left}"
    finally:
        machine.container.remove(force=True)


@pytest.mark.parametrize("state_id", list(STATES))
def test_test_task_bootstraps_the_engine(
    state_id: str,
    fresh_session: Session,
    engine_template: str,
    bootstrapped: Bootstrapped,
) -> None:
    """`./tfstack test -k <one integration test>` on a fresh clone sets up Docker and passes."""
    machine = prepare(fresh_session, engine_template, bootstrapped, state_id, "test")
    try:
        output = timed(
            machine,
            f"./tfstack test -k {SMALL_INTEGRATION_TEST}",
            ["./tfstack", "test", "-k", SMALL_INTEGRATION_TEST],
            TEST_TIMEOUT_S,
            # The preloaded runtime image as is: building it again is the images tests' job.
            env={"TFSTACK_SERVING_IMAGE": "tfstack/serving-runtime:latest"},
        )
        assert "1 passed" in output, output
    finally:
        machine.container.remove(force=True)
