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
  engine is still installed from Debian's mirror by tfstack itself (`apt-get update` and `apt-get
  install docker.io`), from an apt cache that already holds the packages (downloaded once per
  session, ``make_apt_archive``).

The machines run concurrently (tests/fresh/scenarios.py, ``TFSTACK_FRESH_JOBS``, default 3): the
session fixture ``outcomes`` runs every machine the selected tests need, and each test asserts the
phases of the behaviour it protects. The engine-restart case rides on state d's `up` machine, after
`up` and the predict (which start from the untouched state) and before `down`.
"""

from __future__ import annotations

import pytest

from tests.fresh.scenarios import (
    RESTART_PHASES,
    RESTART_STATE,
    STATES,
    TEST_PHASES,
    UP_PHASES,
    Outcome,
)

pytestmark = pytest.mark.fresh


@pytest.mark.parametrize("state_id", list(STATES))
def test_up_serves_then_down(state_id: str, outcomes: dict[tuple[str, str], Outcome]) -> None:
    """`./tfstack up` on a fresh clone serves half_plus_two on 127.0.0.1:8501, and `down` works."""
    outcomes[(state_id, "up")].require(UP_PHASES)


@pytest.mark.parametrize("state_id", list(STATES))
def test_test_task_bootstraps_the_engine(
    state_id: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    """`./tfstack test -k <one integration test>` on a fresh clone sets up Docker and passes."""
    outcomes[(state_id, "test")].require(TEST_PHASES)


@pytest.mark.parametrize("state_id", [RESTART_STATE])
def test_engine_restart_brings_the_stack_back(
    state_id: str, outcomes: dict[tuple[str, str], Outcome]
) -> None:
    """After a dockerd restart the stack serves again by itself and `up` is a no-op."""
    outcomes[(state_id, "up")].require(RESTART_PHASES)
