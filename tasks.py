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


def spec_file(spec: str) -> Path:
    """A --spec option as a path: absolute, or relative to the project root.

    Shown relative to the working directory when below it, so messages stay short.
    """
    path = Path(spec)
    path = path if path.is_absolute() else ROOT / path
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@task(
    help={
        "spec": f"the stack spec to check (default {DEFAULT_SPEC}; relative to the project root)",
        "skip_disk": "do not look at model directories and sample files (models come later)",
    }
)
def validate(c: Context, spec: str = DEFAULT_SPEC, skip_disk: bool = False) -> None:
    """Check a stack spec and print every problem found (exit 2), or a one-line summary."""
    from tfstack.validate import check_spec

    report = call(check_spec, spec_file(spec), check_disk=not skip_disk)
    call(report.raise_for_problems)
    print(report.summary())


@task
def schema(c: Context) -> None:
    """Regenerate config/stack.schema.json (the JSON Schema editors use) from the typed spec."""
    from tfstack.validate import write_json_schema

    target = ROOT / "config" / "stack.schema.json"
    changed = call(write_json_schema, target)
    print(f"{target.relative_to(ROOT)} {'written' if changed else 'already up to date'}")


@task(
    help={
        "spec": f"the stack spec to render (default {DEFAULT_SPEC}; relative to the project root)",
        "dry_run": "validate, render and check, then show what would change without writing",
    }
)
def render(c: Context, spec: str = DEFAULT_SPEC, dry_run: bool = False) -> None:
    """Validate the spec, render compose/ and config/ files, check them, write them atomically."""
    from tfstack.render import render_to_disk

    report = call(render_to_disk, spec_file(spec), ROOT, dry_run=dry_run)
    for change in report.changes:
        verb = change.action
        if dry_run and change.action != "unchanged":
            verb = f"would {change.action}"
        print(f"{verb:>15}  {change.path}")
    if dry_run:
        print("dry run: nothing written")
    elif not report.written:
        print("everything up to date")


@task(help={"spec": f"the stack spec to compare (default {DEFAULT_SPEC}; relative to the root)"})
def plan(c: Context, spec: str = DEFAULT_SPEC) -> None:
    """Show what `render` would change: a unified diff against the files on disk (exit 0)."""
    from tfstack.files import format_plan
    from tfstack.render import plan_render

    changes = call(plan_render, spec_file(spec), ROOT)
    print(format_plan(changes), end="")


@task(
    positional=["what"],
    help={
        "what": "the benchmark to run, e.g. render; `invoke bench -h` lists them",
        "runs": "timed repetitions (default: the benchmark's own)",
    },
)
def bench(c: Context, what: str | None = None, runs: int = 0) -> None:
    """Run a benchmark (`invoke bench render`) and print its figures beside targets.md."""
    from tfstack.bench import describe_benchmarks, run_benchmark

    if what in (None, "-h", "--help"):
        # invoke hands a trailing --help to a missing positional; answer it here.
        print(describe_benchmarks())
        return
    result = call(run_benchmark, what, runs=runs or None, say=say)
    print(result.report())
    if not result.met:
        raise Exit(code=1)


@task(
    help={
        "dry_run": "show the plans (base image, wheelhouse, image build) and change nothing",
        "no_cache": "rebuild every layer instead of reusing the layer cache",
    }
)
def images(c: Context, dry_run: bool = False, no_cache: bool = False) -> None:
    """Build the runtime image tfstack/serving-runtime (no registry, no network inside the build)."""
    from tfstack.engine import docker_client, ensure_engine
    from tfstack.images import apply_runtime_build, plan_runtime_build

    client = call(docker_client) if dry_run else call(ensure_engine, say=say)
    plans = call(plan_runtime_build, client, root=ROOT, no_cache=no_cache, try_pull=not dry_run)
    if dry_run:
        print("\n".join(plans.describe()))
        print("dry run: nothing downloaded or built")
        return
    built = call(apply_runtime_build, client, plans, root=ROOT, say=say)
    print(built.summary())


ns = Collection(engine, test, validate, schema, render, plan, bench, images)
