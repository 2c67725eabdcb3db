"""tfstack tasks: thin, typed wrappers around the tfstack library.

Each task parses its options, calls one library function and turns a TfstackError into a clear
message and an exit code (2 for bad input, 1 for failures). `./tfstack --list` shows them all;
`./tfstack <task> --help` shows a task's options.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import docker
from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.console import Console

import tfstack.build.frontend
import tfstack.core.certs
import tfstack.docker.engine
import tfstack.rollout
import tfstack.stack.lifecycle
import tfstack.stack.predict
import tfstack.stack.swarm
import tfstack.stack.top
from tfstack.bench.runner import describe_benchmarks, run_benchmark
from tfstack.build import optimized
from tfstack.ci import PROVIDERS, write_pipeline
from tfstack.cluster import cluster_down, cluster_status, cluster_up
from tfstack.core.files import format_plan, plan_to_json
from tfstack.errors import TfstackError
from tfstack.models.demo import plan_demo_models, write_demo_models
from tfstack.selftest import run_tests
from tfstack.serving.client import ModelRef, format_signatures
from tfstack.spec import check_spec, write_json_schema
from tfstack.stack.targets import Described, Documented, Target, target_for

ROOT = Path(__file__).resolve().parent
# TensorFlow's C++ INFO lines (oneDNN, CPU features) drown tfstack's own output when tasks import
# it (models, rollout); warnings and errors still show. Set at the application edge only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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


def engine_client() -> docker.DockerClient:
    """The engine and Compose v2, ensured (started or installed where allowed) before a task
    touches either. Tasks that go through Lifecycle or a rollout get the same call from there,
    before anything that needs Compose (up ensures it before rendering's Compose check)."""
    return call(tfstack.docker.engine.ensure_engine, say=say)


@task
def engine(c: Context) -> None:
    """Make sure a Docker engine and Compose v2 are usable; installs them as root on Debian."""
    client = engine_client()
    print(f"Docker engine {client.version()['Version']} ready")


@task(
    help={
        "unit": "run only the unit tests (no Docker needed)",
        "k": "only tests matching this pytest -k expression",
        "x": "stop at the first failure",
        "junit_xml": "also write a JUnit XML report to this path (for CI)",
        "fresh": "run the fresh-machine tier instead (tests/fresh: the README's two commands in "
        "machines with a nested Docker engine, about 12 minutes)",
    }
)
def test(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    unit: bool = False,
    k: str = "",
    x: bool = False,
    junit_xml: str = "",
    fresh: bool = False,
) -> None:
    """Run the test suite: unit and integration (installs and starts Docker when needed)."""
    report = Path(junit_xml).resolve() if junit_xml else None
    code = call(
        run_tests,
        root=ROOT,
        unit_only=unit,
        keyword=k,
        exit_first=x,
        junit_xml=report,
        fresh=fresh,
        say=say,
    )
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


def project_of(spec: str) -> Path:
    """The stack's project root: ``<root>/config/stack.yaml`` -> ``<root>``."""
    return spec_file(spec).resolve().parent.parent


def deployment_target(spec: str, target: str, *, project_root: Path | None = None) -> Target:
    """The target a command runs on: --target, else the spec's deploy.target."""
    return call(
        target_for,
        spec_file(spec),
        target,
        source_root=ROOT,
        project_root=project_root,
        say=say,
    )


def show(report: Described) -> None:
    """Print a report's lines: text as it is, rich renderables (tables) through rich."""
    console = Console()
    for line in report.describe():
        if isinstance(line, str):
            print(line)
        else:
            console.print(line)


@task(
    help={
        "spec": f"the stack spec to check (default {DEFAULT_SPEC}; relative to the project root)",
        "skip_disk": "do not look at model directories and sample files (models come later)",
        "json_": "print the JSON document (docs/json-output.md); exit 2 still marks problems",
    }
)
def validate(
    c: Context, spec: str = DEFAULT_SPEC, skip_disk: bool = False, json_: bool = False
) -> None:
    """Check a stack spec and print every problem found (exit 2), or a one-line summary."""
    report = call(check_spec, spec_file(spec), check_disk=not skip_disk)
    if json_:
        print(json.dumps(report.to_json(), indent=2))
        if not report.ok:
            raise Exit(code=2)
        return
    call(report.raise_for_problems)
    print(report.summary())


@task
def schema(c: Context) -> None:
    """Regenerate config/stack.schema.json (the JSON Schema editors use) from the typed spec."""
    target = ROOT / "config" / "stack.schema.json"
    changed = call(write_json_schema, target)
    print(f"{target.relative_to(ROOT)} {'written' if changed else 'already up to date'}")


@task(
    help={
        "spec": f"the stack spec to render (default {DEFAULT_SPEC}; relative to the project root)",
        "dry_run": "validate, render and check, then show what would change without writing",
        "target": "compose (compose/ and config/) or kubernetes (deploy/kubernetes/, a Kustomize "
        "base); default: the spec's deploy.target",
    }
)
def render(c: Context, spec: str = DEFAULT_SPEC, dry_run: bool = False, target: str = "") -> None:
    """Validate the spec, render the target's files, check them, write them atomically."""
    report = call(deployment_target(spec, target, project_root=ROOT).render, dry_run=dry_run)
    for change in report.changes:
        verb: str = change.action
        if dry_run and change.action != "unchanged":
            verb = f"would {change.action}"
        print(f"{verb:>15}  {change.path}")
    if dry_run:
        print("dry run: nothing written")
    elif not report.written:
        print("everything up to date")
    if report.next_step and not dry_run:
        print(report.next_step)


@task(
    help={
        "spec": f"the stack spec to compare (default {DEFAULT_SPEC}; relative to the root)",
        "json_": "print the JSON document (docs/json-output.md) instead of the diff",
        "target": "swarm: the diff of compose/stack.yml and its configs (docs/swarm.md)",
    }
)
def plan(c: Context, spec: str = DEFAULT_SPEC, json_: bool = False, target: str = "") -> None:
    """Show what `render` would change: a unified diff against the files on disk (exit 0)."""
    changes = call(deployment_target(spec, target).plan)
    if json_:
        print(json.dumps(plan_to_json(changes), indent=2))
        return
    print(format_plan(changes), end="")


@task(
    positional=["what"],
    help={
        "what": "the benchmark to run, e.g. render; `invoke bench -h` lists them",
        "runs": "timed repetitions (default: the benchmark's own)",
        "image": "bench this image instead of the local server (serve; repeat for two)",
        "minutes": "how long a timed benchmark runs (soak: default 3, at most 30)",
        "json_": "print the JSON document (docs/json-output.md) instead of the table",
    },
    iterable=["image"],
)
def bench(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    what: str | None = None,
    runs: int = 0,
    image: list[str] | None = None,
    minutes: float = 0.0,
    json_: bool = False,
) -> None:
    """Run a benchmark (`invoke bench render`) and print its figures beside targets.md."""
    if what in (None, "-h", "--help"):
        # invoke hands a trailing --help to a missing positional; answer it here.
        print(describe_benchmarks())
        return
    result = call(
        run_benchmark,
        what,
        root=ROOT,
        runs=runs or None,
        say=say,
        images=tuple(image or ()),
        minutes=minutes or None,
    )
    print(json.dumps(result.to_json(), indent=2) if json_ else result.report())
    if not result.met:
        raise Exit(code=1)


@task(
    help={
        "dry_run": "show the plans (base image, wheelhouse, image build) and change nothing",
        "no_cache": "rebuild every layer instead of reusing the layer cache",
    }
)
def images(c: Context, dry_run: bool = False, no_cache: bool = False) -> None:
    """Build tfstack/serving-runtime (no registry, no network in the build) and the front door's
    tfstack/frontend (HAProxy from the Debian mirror the base image names) on the same base."""
    client = call(tfstack.docker.engine.docker_client) if dry_run else engine_client()
    plans = call(
        tfstack.build.frontend.plan_images,
        client,
        root=ROOT,
        no_cache=no_cache,
        try_pull=not dry_run,
    )
    if dry_run:
        print("\n".join(plans.describe()))
        print("dry run: nothing downloaded or built")
        return
    for built in call(tfstack.build.frontend.apply_images, client, plans, root=ROOT, say=say):
        print(built.summary())


@task(
    iterable=["hosts"],
    help={
        "dir": "where ca.pem, ca-key.pem, server.pem, server-key.pem go (default state/certs)",
        "hosts": "names and IP addresses of the door, comma separated or repeated "
        "(default localhost,127.0.0.1,::1)",
        "spec": f"the spec the printed lines are for (default {DEFAULT_SPEC})",
    },
)
def certs(
    c: Context, dir: str = "state/certs", hosts: list[str] | None = None, spec: str = DEFAULT_SPEC
) -> None:
    """A local CA and a server certificate for the door's TLS (development only)."""
    plan = call(tfstack.core.certs.plan_certs, ROOT / dir, hosts or ())
    for line in plan.describe():
        say(line)
    for path in call(tfstack.core.certs.apply_certs, plan):
        print(f"wrote {path}")
    print(f"clients trust {plan.ca_cert} (invoke predict --ca-file {plan.ca_cert})")
    print(f"add to {spec_file(spec)}:")
    print("\n".join(tfstack.core.certs.spec_lines(plan, spec_file(spec).parent)))


@task(
    help={
        "spec": f"the stack spec (default {DEFAULT_SPEC}; relative to the project root)",
        "timeout": "seconds to wait for every model version and label to be AVAILABLE",
        "dry_run": "validate, render in memory, print the plan (noop/reload/...); change nothing",
        "target": "compose or swarm (docs/swarm.md); default: the spec's deploy.target",
    }
)
def up(
    c: Context,
    spec: str = DEFAULT_SPEC,
    timeout: float = 180.0,
    dry_run: bool = False,
    target: str = "",
) -> None:
    """Start the stack, or apply changes (hot reload if only models changed); wait for it."""
    chosen = deployment_target(spec, target)
    console = Console(stderr=True)
    with console.status("tfstack up") as live:

        def progress(text: str) -> None:
            live.update(f"tfstack up: {text}")

        def tell(text: str) -> None:
            # soft_wrap: a message is one line in a log, as `say` prints it, never cut at 80.
            console.print(f"tfstack: {text}", highlight=False, markup=False, soft_wrap=True)

        report = call(chosen.up, timeout=timeout, dry_run=dry_run, say=tell, progress=progress)
    show(report)


@task(
    help={
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "volumes": "also remove the volumes tfstack created for the stack",
        "target": "compose or swarm; default: the spec's deploy.target",
    }
)
def down(c: Context, spec: str = DEFAULT_SPEC, volumes: bool = False, target: str = "") -> None:
    """Stop and remove the stack: exactly the containers, networks (volumes) tfstack created."""
    removed = call(deployment_target(spec, target).down, volumes=volumes)
    for item in removed:
        print(f"removed {item}")
    print("stack down")


@task(
    help={
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "json_": "print the stable JSON document (docs/status-json.md) instead of tables",
        "target": "compose or swarm; default: the spec's deploy.target",
    }
)
def status(c: Context, spec: str = DEFAULT_SPEC, json_: bool = False, target: str = "") -> None:
    """Per model and version: state, labels, error; per service: container, health, endpoints."""
    result = call(deployment_target(spec, target).status)
    if json_:
        print(json.dumps(result.to_json(), indent=2))
    else:
        show(result)
    if not result.ok:
        raise Exit(code=1)


@task(
    help={
        "model": "model name",
        "version": "a version number (default: the server's choice, the highest served)",
        "label": "a version label such as stable (instead of --version)",
        "grpc": "use the gRPC API instead of REST",
        "data": 'the request body as JSON ({"instances": [...]}), or @file.json',
        "signature": "signature name (default serving_default)",
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "target": "swarm: through the Swarm stack's door (docs/swarm.md)",
        "api_key": "the key sent to the front door (default: the first plain key of "
        "frontend.auth.api_keys_file)",
        "ca_file": "PEM CA file the door's TLS certificate is checked with (default: the "
        "spec's frontend.tls.cert_file)",
    }
)
def predict(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    model: str = "",
    data: str = "",
    version: str = "",
    label: str = "",
    grpc: bool = False,
    signature: str = "",
    spec: str = DEFAULT_SPEC,
    target: str = "",
    api_key: str = "",
    ca_file: str = "",
) -> None:
    """Send one predict request to the running stack and print the answer as JSON."""
    if not model or not data:
        raise Exit("tfstack: error: --model and --data are required (see --help)", code=2)
    body = call(tfstack.stack.predict.parse_data, data, cwd=Path.cwd())
    if version and not version.isdigit():
        raise Exit(f"tfstack: error: --version must be a number, not {version!r}", code=2)
    ref = call(ModelRef, model, version=int(version) if version else None, label=label or None)
    answer = call(
        deployment_target(spec, target).predict,
        ref,
        body,
        grpc=grpc,
        signature=signature or None,
        api_key=api_key or None,
        ca_file=Path(ca_file) if ca_file else None,
    )
    print(json.dumps(answer))


@task(
    help={
        "model": "model name",
        "grpc": "ask the gRPC API instead of REST",
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
    }
)
def inspect(c: Context, model: str = "", grpc: bool = False, spec: str = DEFAULT_SPEC) -> None:
    """Signatures, inputs and outputs (dtypes, shapes) of a served model, like saved_model_cli."""
    if not model:
        raise Exit("tfstack: error: --model is required (see --help)", code=2)
    metadata = call(tfstack.stack.predict.inspect, spec_file(spec), model, grpc=grpc)
    print(format_signatures(metadata))


@task(
    help={
        "follow": "keep printing new lines until Ctrl-C",
        "tail": "how many past lines to show (default 200; 0 = all)",
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
    }
)
def logs(c: Context, follow: bool = False, tail: int = 200, spec: str = DEFAULT_SPEC) -> None:
    """Print the serving containers' logs (docker compose logs)."""
    lifecycle = tfstack.stack.lifecycle.Lifecycle(spec_file(spec), source_root=ROOT, say=say)
    text = call(lifecycle.logs, follow=follow, tail=tail or None)
    if text:
        print(text, end="" if text.endswith("\n") else "\n")


@task(
    help={
        "root": "model repository to write (default models; relative to the project root)",
        "force": "rewrite models that already exist",
        "skip_resnet": "skip ResNet-50 (the slow, ~100 MB model)",
        "dry_run": "show what would be written without writing",
    }
)
def models(
    c: Context,
    root: str = "models",
    force: bool = False,
    skip_resnet: bool = False,
    dry_run: bool = False,
) -> None:
    """Write the demo model repository with TensorFlow (half_plus_two, half_plus_three, resnet)."""
    target = Path(root) if Path(root).is_absolute() else ROOT / root
    if dry_run:
        for step in plan_demo_models(target, force=force, include_resnet=not skip_resnet):
            print(f"would {step.action:>7}  {step.path}  ({step.model.description})")
        return
    started = time.monotonic()
    results = call(write_demo_models, target, force=force, include_resnet=not skip_resnet, say=say)
    for result in results:
        verb = "wrote" if result.written else "kept"
        took = f" in {result.seconds:.1f} s" if result.written else ""
        size = result.size_bytes
        shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        print(f"{verb:>5}  {result.path}  {shown}{took}")
    print(f"model repository {target} ready in {time.monotonic() - started:.1f} s")


@task(
    help={
        "version": "tensorflow/serving release tag or commit (default 2.20.0; never a branch)",
        "target": "portable | x86-64-v2 | x86-64-v3 | x86-64-v4 | native | a cpuinfo flag list "
        "such as avx2,fma (default: detected from the build host)",
        "source": "build from this local tensorflow/serving tree instead of downloading",
        "toolchain": "upstream (Ubuntu 22.04 + Bazel 7.4.1) or debian (offline bazel-bootstrap)",
        "repository": "image repository for the tags <repository>:<version>-<isa>[-devel]",
        "jobs": "Bazel --jobs (default: sized from the engine's CPUs and memory)",
        "dry_run": "print the full plan (images, build args, Bazel options, memory) and stop",
        "no_cache": "do not reuse Docker layers (the Bazel cache still serves)",
        "write_dockerfiles": "only refresh the rendered copies in dockerfiles/tfserving/",
    }
)
def build_optimized(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    version: str = "",
    target: str = "",
    source: str = "",
    toolchain: str = "upstream",
    repository: str = "tfstack/tfserving",
    jobs: int = 0,
    dry_run: bool = False,
    no_cache: bool = False,
    write_dockerfiles: bool = False,
) -> None:
    """Build tensorflow_model_server for a CPU target: devel image (Bazel), then runtime image."""
    if write_dockerfiles:
        for path in call(optimized.write_committed_dockerfiles, ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
        return

    client = call(tfstack.docker.engine.docker_client) if dry_run else engine_client()
    request = optimized.BuildRequest(
        version=version or None,
        target=target or None,
        source=Path(source).resolve() if source else None,
        toolchain=toolchain,
        repository=repository,
        jobs=jobs or None,
        no_cache=no_cache,
    )
    _, result = call(
        optimized.build_optimized, client, request, say=say, show=print, dry_run=dry_run
    )
    if result is None:
        print("dry run: nothing built")
        return
    print("\n".join(result.summary()))


@task(
    help={
        "model": "the model to roll out",
        "version": "the new version number (higher than every served version)",
        "source": "a SavedModel directory or a Keras .keras/.h5 file to stage as that version",
        "canary": "stop after labelling the new version `canary` (stable stays)",
        "promote": "promote the canary in progress to stable",
        "dry_run": "print the plan and the config transitions; change nothing",
        "allow_signature_change": "accept signatures incompatible with the stable version",
        "resume": "finish an interrupted rollout from its journal",
        "abort": "undo an interrupted or failed rollout from its journal",
        "retire_previous": "also unload the previous stable version after the drain",
        "drain": "seconds between promotion and unloading retired versions (default 2)",
        "latency_factor": "max candidate/stable median latency in the side instance (default 2)",
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "target": "swarm: roll out on the Swarm (docs/swarm.md); kubernetes: print what rolling "
        "out a new image changes in deploy/kubernetes (with --dry-run)",
        "model_image": "with --target kubernetes: the new model image, pinned by digest",
        "serving_image": "with --target kubernetes: a new server image",
        "json_": "print the outcome as JSON (docs/json-output.md) instead of the summary",
        "traffic": "weighted canary: percentages of unversioned requests sent to the new version "
        "step by step through the door, each gated by models[].slo (e.g. 10,50,100)",
        "analysis_seconds": "with --traffic: length of one analysis window (default: "
        "models[].slo.window_seconds)",
    }
)
def rollout(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    model: str = "",
    version: int = 0,
    source: str = "",
    canary: bool = False,
    promote: bool = False,
    dry_run: bool = False,
    allow_signature_change: bool = False,
    resume: bool = False,
    abort: bool = False,
    retire_previous: bool = False,
    drain: float = 2.0,
    latency_factor: float = 2.0,
    spec: str = DEFAULT_SPEC,
    target: str = "",
    model_image: str = "",
    serving_image: str = "",
    json_: bool = False,
    traffic: str = "",
    analysis_seconds: float = 0.0,
) -> None:
    """Put a new model version into service: pin, stage, verify aside, load, promote, retire."""
    chosen = deployment_target(spec, target)
    request = tfstack.rollout.RolloutRequest(
        model=model,
        version=version or None,
        source=str(Path(source).resolve()) if source else None,
        canary=canary,
        promote=promote,
        allow_signature_change=allow_signature_change,
        keep_previous=not retire_previous,
        drain_s=drain,
        latency_factor=latency_factor,
        traffic=call(tfstack.rollout.parse_traffic, traffic) if traffic else (),
        analysis_s=analysis_seconds,
    )
    outcome = call(
        chosen.rollout,
        request,
        dry_run=dry_run,
        resume=resume,
        abort=abort,
        model_image=model_image or None,
        serving_image=serving_image or None,
    )
    # The Kubernetes rollout plan has no JSON form: its text is printed with or without --json.
    if json_ and isinstance(outcome, Documented):
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        show(outcome)


@task(
    help={
        "model": "the model to roll back",
        "dry_run": "print the plan and the config transitions; change nothing",
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "target": "swarm: roll back on the Swarm (docs/swarm.md); default: deploy.target",
        "json_": "print the outcome as JSON (docs/json-output.md) instead of the summary",
    }
)
def rollback(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    model: str = "",
    dry_run: bool = False,
    spec: str = DEFAULT_SPEC,
    json_: bool = False,
    target: str = "",
) -> None:
    """Move labels back to the previous version (reloaded if retired); unload the bad one."""
    if not model:
        raise Exit("tfstack: error: --model is required (see --help)", code=2)
    outcome = call(deployment_target(spec, target).rollback, model, dry_run=dry_run)
    if json_:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        show(outcome)


@task(
    positional=["action"],
    help={
        "action": "init: write the pipeline files",
        "provider": f"the CI system: {' or '.join(PROVIDERS)}",
        "dir": "the repository to write the pipeline into (default: the project root)",
        "spec": f"the stack spec the pipeline uses (default {DEFAULT_SPEC}; relative to the root)",
        "force": "overwrite pipeline files that exist with different content",
        "dry_run": "show what would be written (and the diffs) without writing",
    },
)
def ci(  # noqa: PLR0917 (invoke maps parameters to options)
    c: Context,
    action: str | None = None,
    provider: str = "",
    dir: str = "",
    spec: str = DEFAULT_SPEC,
    force: bool = False,
    dry_run: bool = False,
) -> None:
    """`ci init --provider github|gitlab`: write a CI pipeline (lint, build, tests, deploy)."""
    if action != "init":
        raise Exit(f"tfstack: error: unknown ci action {action!r}; use `ci init`", code=2)
    out_dir = (Path(dir) if Path(dir).is_absolute() else Path.cwd() / dir) if dir else ROOT
    changes = call(
        write_pipeline, provider, spec_file(spec), ROOT, out_dir, force=force, dry_run=dry_run
    )
    for change in changes:
        verb: str = change.action
        if dry_run and change.action != "unchanged":
            verb = f"would {change.action}"
        print(f"{verb:>15}  {out_dir / change.path}")
    if dry_run:
        print("dry run: nothing written")


@task(
    help={
        "nodes": "how many nodes to start (1..7; the first is the manager)",
        "spec": f"the stack spec whose door ports the manager publishes (default {DEFAULT_SPEC})",
    }
)
def cluster_up_task(c: Context, nodes: int = 3, spec: str = DEFAULT_SPEC) -> None:
    """Start a local multi-node Docker Swarm plus registry (docs/swarm.md); reuse a running one."""
    ports = call(tfstack.stack.swarm.door_ports_of, spec_file(spec))
    print("\n".join(call(cluster_up, nodes, published_ports=ports, say=say).describe()))


@task(help={"json_": "print JSON instead of text"})
def cluster_status_task(c: Context, json_: bool = False) -> None:
    """The local cluster's containers, Swarm nodes and registry (exit 1 when not ready)."""
    result = call(cluster_status)
    print(json.dumps(result.to_json(), indent=2) if json_ else "\n".join(result.describe()))
    if not result.ready:
        raise Exit(code=1)


@task()
def cluster_down_task(c: Context) -> None:
    """Remove the local cluster: every container, volume, network and cgroup it made."""
    for item in call(cluster_down):
        print(f"removed {item}")
    print("cluster down")


# `invoke cluster up` would read `up` as the stack's up task: the cluster's tasks live in their
# own collection, called as `./tfstack cluster.up --nodes 3`, `cluster.status`, `cluster.down`.
cluster = Collection("cluster")
cluster.add_task(cluster_up_task, name="up")
cluster.add_task(cluster_status_task, name="status")
cluster.add_task(cluster_down_task, name="down")


@task(
    help={
        "spec": f"the stack spec (default {DEFAULT_SPEC})",
        "interval": "seconds between two scrapes of the replicas' metrics (default 2)",
        "once": "one snapshot (two scrapes, --interval apart) instead of the live view",
        "json_": "with --once: print the tfstack.top/v1 document (docs/json-output.md)",
    }
)
def top(
    c: Context,
    spec: str = DEFAULT_SPEC,
    interval: float = 2.0,
    once: bool = False,
    json_: bool = False,
) -> None:
    """Live per-model req/s, error rate, p50/p99 and replicas from the servers' metrics."""
    if json_ and not once:
        raise Exit("tfstack: error: --json needs --once (the live view is for a terminal)", code=2)
    source = call(tfstack.stack.top.TopSource.open, spec_file(spec), source_root=ROOT)
    if not once:
        # Ctrl-C ends the live view; it is not an error.
        with reported_errors(), suppress(KeyboardInterrupt):
            tfstack.stack.top.run_top(source, interval=interval, console=Console())
        return
    snapshot = call(tfstack.stack.top.snapshot_once, source, interval=interval)
    if json_:
        print(json.dumps(snapshot.to_json(), indent=2))
    else:
        Console().print(tfstack.stack.top.render_snapshot(snapshot))


@task(help={"spec": f"the stack spec (default {DEFAULT_SPEC})"})
def models_image(c: Context, spec: str = DEFAULT_SPEC) -> None:
    """Pack the served model versions into an image tagged by content; push it (swarm)."""
    prepared = call(tfstack.stack.swarm.prepare_swarm, spec_file(spec), project_of(spec), say=say)
    print(f"model image {prepared.images.models} (revision {prepared.images.models_digest[:16]})")


ns = Collection(
    models_image,
    engine,
    top,
    test,
    validate,
    schema,
    render,
    plan,
    bench,
    images,
    certs,
    up,
    down,
    status,
    predict,
    inspect,
    logs,
    models,
    build_optimized,
    rollout,
    rollback,
    ci,
)
ns.add_collection(cluster)
