"""tfstack tasks: thin, typed wrappers around the tfstack library.

Each task parses its options, calls one library function and turns a TfstackError into a clear
message and an exit code (2 for bad input, 1 for failures). `./tfstack --list` shows them all;
`./tfstack <task> --help` shows a task's options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from tfstack.errors import TfstackError

ROOT = Path(__file__).resolve().parent
DEFAULT_SPEC = "config/stack.yaml"

T = TypeVar("T")


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into `tfstack: error: ...` and the error's exit code; no traceback."""
    try:
        yield
    except TfstackError as exc:
        raise Exit(f"tfstack: error: {exc}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("tfstack: interrupted", code=130) from None


def call(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    with reported_errors():
        return function(*args, **kwargs)


def say(text: str) -> None:
    print(f"tfstack: {text}", file=sys.stderr, flush=True)


@task
def engine(c: Context) -> None:
    """Make sure a Docker engine and Compose v2 are usable; installs them as root on Debian."""
    from tfstack.engine import ensure_engine

    client = call(ensure_engine, say=say)
    print(f"Docker engine {client.version()['Version']} ready")


@task(
    help={
        "unit": "run only the unit tests (no Docker needed)",
        "k": "only tests matching this pytest -k expression",
        "x": "stop at the first failure",
    }
)
def test(c: Context, unit: bool = False, k: str = "", x: bool = False) -> None:
    """Run the test suite: unit and integration (installs and starts Docker when needed)."""
    from tfstack.testing import run_tests

    code = call(run_tests, root=ROOT, unit_only=unit, keyword=k, exit_first=x, say=say)
    if code != 0:
        raise Exit(code=code)


ns = Collection(engine, test)
