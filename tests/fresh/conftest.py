"""The fresh-machine tier: the README's two commands on the machine states newcomers really have.

Opt-in: these tests run only when the marker expression names them (``pytest tests/fresh -m
fresh``); a plain ``pytest tests`` (``./tfstack test``) deselects them, since one state takes
minutes and runs a nested Docker engine.

A fresh machine is a container from an image built from ``tests/fresh/Dockerfile`` (one stage per
family) on tfstack's local Debian base, running as root with its own Docker engine possible inside
(the options of :func:`machine_flags`; ``--privileged`` is refused on this kernel). Everything made
here is labelled ``org.tfstack.fresh=<session token>`` and removed at the end of the session, failed
or not; the one deliberate survivor is the pip download cache volume (:data:`PIP_CACHE_VOLUME`),
kept so later sessions do not download TensorFlow again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from tests.fresh.machines import (
    BASE_IMAGE,
    BOOTSTRAP_TIMEOUT_S,
    CACHE_LABEL,
    FAMILIES,
    HERE,
    PIP_CACHE_VOLUME,
    PRELOADED,
    REVISION_ENV,
    ROOT,
    TIMINGS,
    Bootstrapped,
    Session,
    clone_at,
    compose_plugin_binary,
    make_apt_archive,
    resolve_revision,
    start_engine,
    start_machine,
    stop_engine,
    sweep,
)
from tests.fresh.scenarios import (
    SCENARIO_OF_TEST,
    Groundwork,
    Outcome,
    Scenario,
    run_scenarios,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tier out of runs that did not ask for it by marker expression."""
    if "fresh" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("fresh") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("fresh-machine timings")
    for test, phase, seconds in TIMINGS:
        terminalreporter.write_line(f"{test:<40} {phase:<34} {seconds:7.1f}s")


@pytest.fixture(scope="session")
def fresh_session() -> Iterator[Session]:
    """The host engine, a session token and a scratch directory; everything swept at the end."""
    client = docker.from_env(timeout=600)
    missing = []
    for name in PRELOADED:
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            missing.append(name)
    if missing:
        pytest.fail(
            f"the fresh-machine tier preloads {', '.join(missing)} from the host engine, which "
            "does not have it: run `./tfstack images` first (no registry is reachable here)"
        )
    revision = resolve_revision(os.environ.get(REVISION_ENV) or "HEAD")
    workdir = Path(tempfile.mkdtemp(prefix="tfstack-fresh-"))
    session = Session(client, secrets.token_hex(4), workdir, revision)
    TIMINGS.append(("(session)", f"every clone at {revision[:12]}", 0.0))
    try:
        yield session
    finally:
        problems = sweep(session)
        shutil.rmtree(session.workdir, ignore_errors=True)
        client.close()
        if problems:
            print(
                "tfstack: fresh-machine cleanup left:\n  " + "\n  ".join(problems), file=sys.stderr
            )


def build_images(fresh_session: Session, families: Sequence[str]) -> None:
    """Build machine families (in order: a stage builds on the previous ones) with the legacy
    builder; tags go to ``fresh_session.images``."""
    context = fresh_session.workdir / "context"
    if not context.is_dir():
        context.mkdir()
        shutil.copy2(HERE / "Dockerfile", context / "Dockerfile")
        shutil.copy2(compose_plugin_binary(), context / "docker-compose")
    for family in families:
        tag = f"tfstack-fresh/{family}:{fresh_session.token}"
        started = time.monotonic()
        try:
            fresh_session.client.images.build(
                path=str(context),
                target=family,
                tag=tag,
                labels=fresh_session.labels,
                buildargs={"BASE": BASE_IMAGE},
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            tail = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)
            pytest.fail(f"tests/fresh/Dockerfile stage {family} failed to build:\n{tail[-3000:]}")
        fresh_session.images[family] = tag
        TIMINGS.append(("(session)", f"build image {family}", time.monotonic() - started))


def seed_template(fresh_session: Session) -> str:
    """A /var/lib/docker volume holding the base and runtime images, made by a stopped engine.

    Loaded once from the host engine (``docker save | docker load``); every state gets a copy.
    """
    started = time.monotonic()
    volume = fresh_session.volume("template")
    empty = fresh_session.workdir / "empty"
    empty.mkdir()
    seeder = start_machine(fresh_session, "engine", "seeder", clone=empty, docker_dir=volume)
    try:
        start_engine(seeder)
        save = subprocess.Popen(["docker", "save", *PRELOADED], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "exec", "-i", seeder.container.id, "docker", "load"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait(timeout=60) == 0, "docker save of the preloaded images failed"
        assert load.returncode == 0, f"docker load in the seeder failed: {load.stderr}"
        stop_engine(seeder)
    finally:
        seeder.container.remove(force=True)
    TIMINGS.append(("(session)", "seed engine template", time.monotonic() - started))
    return volume


def bootstrap(fresh_session: Session) -> Bootstrapped:
    """Run `./tfstack --list` on a fresh clone in a bare machine: the venv bootstrap, once.

    It does not depend on the Docker state, so each state later starts from its own fresh clone
    with this venv hard-linked in (same path inside every machine, so the venv stays valid).
    """
    with contextlib.suppress(docker.errors.APIError):
        fresh_session.client.volumes.create(PIP_CACHE_VOLUME, labels={CACHE_LABEL: "fresh-pip"})
    clone = clone_at(fresh_session.revision, fresh_session.workdir / "bootstrap" / "tfstack")
    machine = start_machine(fresh_session, "bare", "bootstrap", clone=clone, pip_cache=True)
    started = time.monotonic()
    try:
        code, output = machine.run(["./tfstack", "--list"], timeout_s=BOOTSTRAP_TIMEOUT_S)
    finally:
        machine.container.remove(force=True)
    seconds = time.monotonic() - started
    TIMINGS.append(("(session)", "./tfstack bootstrap (venv)", seconds))
    assert code == 0, f"./tfstack --list failed on a fresh clone in a bare machine:\n{output}"
    assert "environment ready" in output, output
    return Bootstrapped(clone, seconds, output)


@pytest.fixture(scope="session")
def groundwork(fresh_session: Session) -> Groundwork:
    """Images, venv bootstrap, seeded engine template and apt archive, built side by side.

    Only the bare image comes first (the bootstrap and the apt archive run in it); the other
    families and the template (which needs the engine family) are built meanwhile.
    """
    started = time.monotonic()
    build_images(fresh_session, FAMILIES[:1])

    def engines_then_template() -> str:
        build_images(fresh_session, FAMILIES[1:])
        return seed_template(fresh_session)

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="fresh-setup") as pool:
        booted = pool.submit(bootstrap, fresh_session)
        archive = pool.submit(make_apt_archive, fresh_session)
        template = pool.submit(engines_then_template)
        ground = Groundwork(
            fresh_session, template.result(), booted.result(), archive.result(), stack_models()
        )
    TIMINGS.append(("(session)", "groundwork (side by side)", time.monotonic() - started))
    return ground


def stack_models() -> tuple[str, ...]:
    """The models of the README's stack (config/stack.yaml), which `up` must bring back."""
    spec = yaml.safe_load((ROOT / "config" / "stack.yaml").read_text(encoding="utf-8"))
    return tuple(str(model["name"]) for model in spec["models"])


def selected_scenarios(items: Sequence[pytest.Item]) -> list[Scenario]:
    """The machines the selected tests need: one per (state, command); restart rides on d-up."""
    wanted: dict[tuple[str, str], bool] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = getattr(item, "originalname", "")
        if callspec is None or name not in SCENARIO_OF_TEST:
            continue
        command, restart = SCENARIO_OF_TEST[name]
        key = (str(callspec.params["state_id"]), str(command))
        wanted[key] = wanted.get(key, False) or bool(restart)
    return [Scenario(state, command, restart) for (state, command), restart in wanted.items()]


@pytest.fixture(scope="session")
def outcomes(
    request: pytest.FixtureRequest, groundwork: Groundwork
) -> dict[tuple[str, str], Outcome]:
    """Every selected test's machine, run concurrently once; what each phase did."""
    return run_scenarios(groundwork, selected_scenarios(request.session.items))
