"""What each fresh-machine test does, as scenarios the session runs concurrently.

A scenario is one machine's story: start it in its state, run a README command, check the result
from inside the machine, and (state d) restart the machine's engine under a running stack. Several
scenarios run at once in threads (:func:`run_scenarios`; their machines are separate containers
with their own engines, ports and /var/lib/docker), and each records the outcome of every phase;
the tests in test_fresh_machine.py then assert the phases of the behaviour they protect. Nothing is
shared between two scenarios but read-only inputs (images, the seeded engine template, the venv).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fresh.machines import (
    TIMINGS,
    Bootstrapped,
    Machine,
    Session,
    install_apt_archive,
    retire,
    seeded_docker_dir,
    start_engine,
    start_machine,
    state_clone,
    stop_engine,
)

UP_TIMEOUT_S = 900
TEST_TIMEOUT_S = 900
# After the engine is back, the stack must answer within this (restart policy, model loading).
BACK_TIMEOUT_S = 300
# How many machines run at once (2 cores: the work is mostly waiting on engines, apt and loads).
JOBS_ENV = "TFSTACK_FRESH_JOBS"
DEFAULT_JOBS = 3
# One small integration test: it needs the engine, a serving image and Compose-free validation.
SMALL_INTEGRATION_TEST = "test_port_in_use_is_reported_before_starting"
SAMPLE = {"instances": [1.0, 2.0, 5.0]}
EXPECTED = {"predictions": [2.5, 3.0, 4.5]}
STACK_LABEL = "org.tfstack.project"  # on every container `up` starts


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
RESTART_STATE = "d-everything"  # the engine-restart case runs on this state's `up` machine

# The phases each test asserts (see test_fresh_machine.py).
UP_PHASES = ("prepare", "./tfstack up", "REST predict", "./tfstack down")
RESTART_PHASES = ("engine restart", "stack back after restart", "./tfstack up is a no-op")
TEST_PHASES = ("prepare", "./tfstack test")
# test function (test_fresh_machine.py) -> the machine it needs: (README command, restart case)
SCENARIO_OF_TEST = {
    "test_up_serves_then_down": ("up", False),
    "test_engine_restart_brings_the_stack_back": ("up", True),
    "test_test_task_bootstraps_the_engine": ("test", False),
}


@dataclass(frozen=True)
class Groundwork:
    """What every scenario of a session starts from (made once, read-only afterwards)."""

    session: Session
    template: str  # /var/lib/docker volume with the preloaded images
    bootstrapped: Bootstrapped
    apt_archive: str  # volume with docker.io's .debs, for machines without Docker
    models: tuple[str, ...]  # the README stack's models, from config/stack.yaml


@dataclass
class Outcome:
    """Every phase one scenario ran: its seconds or why it failed."""

    machine: str
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def step(self, phase: str, action: Callable[[], None]) -> bool:
        """Run one phase, timed; a failure is recorded (never raised) and returns False."""
        started = time.monotonic()
        try:
            action()
        except Exception as exc:
            self.errors[phase] = "".join(traceback.format_exception_only(exc)).strip()
            return False
        finally:
            TIMINGS.append((self.machine, phase, time.monotonic() - started))
        self.seconds[phase] = time.monotonic() - started
        return True

    def require(self, phases: Sequence[str]) -> None:
        """Fail the calling test unless each of ``phases`` ran and passed."""
        for phase in phases:
            if phase in self.errors:
                pytest.fail(f"machine {self.machine}: {phase} failed:\n{self.errors[phase]}")
            if phase not in self.seconds:
                earlier = "; ".join(f"{p}: {e.splitlines()[0]}" for p, e in self.errors.items())
                pytest.fail(
                    f"machine {self.machine}: {phase} did not run ({earlier or 'not scheduled'})"
                )


@dataclass(frozen=True)
class Scenario:
    """One machine to run: the state, the README command and whether to restart the engine."""

    state_id: str
    command: str  # "up" or "test"
    restart: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.state_id, self.command)


def facts(machine: Machine) -> dict[str, bool]:
    """What the machine has, asked the way a user would (PATH, `docker compose`, `docker info`)."""
    checks = {
        "docker_cli": "command -v docker",
        "dockerd": "command -v dockerd",
        "compose": "docker compose version",
        "engine": "docker info",
    }
    return {name: machine.sh(f"{probe} >/dev/null 2>&1")[0] == 0 for name, probe in checks.items()}


def prepare(ground: Groundwork, state_id: str, command: str) -> Machine:
    """A machine in ``state_id`` with its own clone and engine directory, state checked."""
    state = STATES[state_id]
    name = f"{state_id[0]}-{command}"
    session = ground.session
    clone: Path = state_clone(session, ground.bootstrapped, name)
    started = time.monotonic()
    docker_dir = seeded_docker_dir(session, ground.template, name)
    TIMINGS.append((name, "(copy of the seeded /var/lib/docker)", time.monotonic() - started))
    machine = start_machine(
        session,
        state.family,
        name,
        clone=clone,
        docker_dir=docker_dir,
        apt_archive=None if state.dockerd else ground.apt_archive,
    )
    if not state.dockerd:
        # A machine whose apt cache already holds docker.io's packages: tfstack still runs the
        # real `apt-get update` and `apt-get install docker.io`, without a second download.
        install_apt_archive(machine)
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


def run_ok(machine: Machine, argv: list[str], timeout_s: int, **kw: object) -> str:
    """Run ``argv`` in the machine's clone; its output, or an AssertionError naming the exit."""
    code, output = machine.run(argv, timeout_s=timeout_s, **kw)  # type: ignore[arg-type]
    assert code == 0, f"`{' '.join(argv)}` exited {code} in machine {machine.name}:\n{output}"
    return output


PREDICT = (
    "import json, urllib.request; "
    "r = urllib.request.urlopen(urllib.request.Request("
    "'http://127.0.0.1:8501/v1/models/half_plus_two:predict', data=json.dumps({body}).encode(), "
    "headers={{'Content-Type': 'application/json'}}), timeout=30); print(r.read().decode())"
)

# Polls the REST port until every version of every model is AVAILABLE and the predict answers.
WAIT_BACK = """
import json, sys, time, urllib.request
models, deadline = sys.argv[1].split(","), time.monotonic() + float(sys.argv[2])
body = json.dumps(json.loads(sys.argv[3])).encode()
last = "nothing yet"
while time.monotonic() < deadline:
    try:
        states = {}
        for model in models:
            url = "http://127.0.0.1:8501/v1/models/" + model
            with urllib.request.urlopen(url, timeout=5) as answer:
                states[model] = [v["state"] for v in json.load(answer)["model_version_status"]]
        last = json.dumps(states)
        if all(versions and set(versions) == {"AVAILABLE"} for versions in states.values()):
            request = urllib.request.Request(
                "http://127.0.0.1:8501/v1/models/half_plus_two:predict", data=body,
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                print(answer.read().decode())
            sys.exit(0)
    except Exception as exc:
        last = repr(exc)
    time.sleep(1)
print("not back in time; last seen: " + last)
sys.exit(1)
"""


def predict(machine: Machine) -> None:
    answer = run_ok(machine, ["python3", "-c", PREDICT.format(body=repr(SAMPLE))], 60)
    assert json.loads(answer) == EXPECTED, f"unexpected predict answer: {answer}"


def stack_containers(machine: Machine) -> dict[str, tuple[str, str, str]]:
    """The stack's containers: name -> (id, state, started at)."""
    listing = run_ok(machine, ["docker", "ps", "-aq", "--filter", f"label={STACK_LABEL}"], 60)
    ids = listing.split()
    assert ids, f"no container labelled {STACK_LABEL} in machine {machine.name}"
    fmt = "{{.Name}} {{.Id}} {{.State.Status}} {{.State.StartedAt}}"
    rows = run_ok(machine, ["docker", "inspect", "--format", fmt, *ids], 60).split("\n")
    containers = {}
    for row in filter(None, rows):
        name, cid, status, started = row.split()
        containers[name.lstrip("/")] = (cid, status, started)
    return containers


def up_scenario(ground: Groundwork, scenario: Scenario) -> Outcome:
    """`./tfstack up` → REST predict → [engine restart → back → no-op up] → `./tfstack down`."""
    outcome = Outcome(f"{scenario.state_id[0]}-up")
    machines: list[Machine] = []

    def start() -> None:
        machines.append(prepare(ground, scenario.state_id, "up"))

    def up() -> None:
        run_ok(machines[0], ["./tfstack", "up"], UP_TIMEOUT_S)

    def rest_predict() -> None:
        machine = machines[0]
        predict(machine)
        after = facts(machine)
        assert after["engine"] and after["compose"], f"up left no engine or Compose: {after}"

    def down() -> None:
        run_ok(machines[0], ["./tfstack", "down"], 300)
        code, left = machines[0].sh(f"docker ps -aq --filter label={STACK_LABEL}")
        assert code == 0 and left.strip() == "", f"down left containers: {left}"

    try:
        ok = outcome.step("prepare", start)
        ok = ok and outcome.step("./tfstack up", up)
        ok = ok and outcome.step("REST predict", rest_predict)
        if ok and scenario.restart:
            restart_case(ground, machines[0], outcome)
        if ok:
            outcome.step("./tfstack down", down)
    finally:
        for machine in machines:
            retire(ground.session, machine)
    return outcome


def restart_case(ground: Groundwork, machine: Machine, outcome: Outcome) -> None:
    """The engine restarts under the running stack: it comes back by itself, `up` is a no-op."""
    before: dict[str, tuple[str, str, str]] = {}
    after: dict[str, tuple[str, str, str]] = {}

    def restart() -> None:
        before.update(stack_containers(machine))
        assert all(s == "running" for _, s, _ in before.values()), f"not all running: {before}"
        stop_engine(machine)  # SIGTERM and wait, as a service manager stops it
        start_engine(machine)  # as the machine started it

    def back() -> None:
        run_ok(
            machine,
            [
                "python3",
                "-c",
                WAIT_BACK,
                ",".join(ground.models),
                str(BACK_TIMEOUT_S),
                json.dumps(SAMPLE),
            ],
            BACK_TIMEOUT_S + 30,
        )
        after.update(stack_containers(machine))
        assert {n: c[0] for n, c in after.items()} == {n: c[0] for n, c in before.items()}, (
            f"the engine restart replaced containers: before {before}, after {after}"
        )
        again = [n for n in after if after[n][2] == before[n][2]]
        assert not again, f"not restarted by the engine restart (same start time): {again}"

    def noop_up() -> None:
        plan = run_ok(machine, ["./tfstack", "up", "--dry-run"], 300)
        assert "would noop" in plan, f"`up --dry-run` after the restart plans work:\n{plan}"
        output = run_ok(machine, ["./tfstack", "up"], UP_TIMEOUT_S)
        assert "noop done" in output, f"`up` after the restart did something:\n{output}"
        assert stack_containers(machine) == after, (
            f"`up` restarted containers: before {after}, after {stack_containers(machine)}"
        )

    ok = outcome.step("engine restart", restart)
    ok = ok and outcome.step("stack back after restart", back)
    if ok:
        outcome.step("./tfstack up is a no-op", noop_up)


def task_test_scenario(ground: Groundwork, scenario: Scenario) -> Outcome:
    """`./tfstack test -k <one integration test>`: Docker set up by the task, the test passes."""
    outcome = Outcome(f"{scenario.state_id[0]}-test")
    machines: list[Machine] = []

    def start() -> None:
        machines.append(prepare(ground, scenario.state_id, "test"))

    def test() -> None:
        output = run_ok(
            machines[0],
            ["./tfstack", "test", "-k", SMALL_INTEGRATION_TEST],
            TEST_TIMEOUT_S,
            # The preloaded runtime image as is: building it again is the images tests' job.
            env={"TFSTACK_SERVING_IMAGE": "tfstack/serving-runtime:latest"},
        )
        assert "1 passed" in output, output

    try:
        if outcome.step("prepare", start):
            outcome.step("./tfstack test", test)
    finally:
        for machine in machines:
            retire(ground.session, machine)
    return outcome


# Longest first (the restart case, then the states that install Docker), so the last machine to
# start is a short one.
ORDER = {"a": 0, "d": 1, "b": 2, "e": 3, "c": 4}


def jobs() -> int:
    value = os.environ.get(JOBS_ENV, "")
    return max(1, int(value)) if value.isdigit() else DEFAULT_JOBS


def run_scenarios(
    ground: Groundwork, scenarios: Iterable[Scenario]
) -> dict[tuple[str, str], Outcome]:
    """Run ``scenarios`` on at most :func:`jobs` machines at once; outcome per (state, command)."""
    todo = sorted(scenarios, key=lambda s: (not s.restart, ORDER[s.state_id[0]], s.command != "up"))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs(), thread_name_prefix="fresh") as pool:
        futures = {
            s.key: pool.submit(up_scenario if s.command == "up" else task_test_scenario, ground, s)
            for s in todo
        }
        outcomes = {key: future.result() for key, future in futures.items()}
    TIMINGS.append(
        ("(session)", f"{len(todo)} machines, {jobs()} at once", time.monotonic() - started)
    )
    return outcomes
