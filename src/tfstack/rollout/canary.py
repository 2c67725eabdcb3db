"""Weighted canaries (``rollout --traffic``): the canary replica, the door's share, the windows.

Design (docs/rollout.md): the candidate version N is served by one extra *canary replica*, a
clone of a running serving replica (same image, flags, mounts, limits, hardening and network)
whose models.config serves the rolled-out model at version N only and every other model as the
replicas do. The front door sends a share of that model's unversioned inference requests to it
(HAProxy runtime API, no reload); requests naming a version or a label go to the replicas as
always. Because the canary serves nothing else of that model, its own metrics page measures the
candidate and the replicas' pages measure stable over the same window: the servers' metrics need
no version label, and REST and gRPC are judged alike.

Before the door may send it anything, the canary is warmed with the model's samples at the
candidate version (:func:`warm_up_canary`, shared by both targets through a ``post`` callable): a
server's first requests to a model pay its lazy initialisation, which the gates would otherwise
charge to a good candidate (seen on the Swarm: p99 48.6 ms against stable's 8.3 ms over the first
63 requests, rolled back by the ratio gate).

Pure parts (:func:`plan_canary`, :func:`share_command`, :func:`parse_map`) are unit-tested; the
rest talks to the engine and the door.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker.errors
import requests
from docker.types import Mount

from tfstack import render
from tfstack.core.labels import LABEL_MANAGED, LABEL_MODEL, LABEL_PROJECT, LABEL_ROLE
from tfstack.core.progress import Say
from tfstack.docker.compose import ContainerInfo, Replica, container_info
from tfstack.errors import RolloutError, StackError, TfstackError, UsageError
from tfstack.render.frontdoor import CONTAINER_CANARY_MAP, DOOR_ADMIN_PORT, canary_host
from tfstack.rollout.gates import Decision, evaluate
from tfstack.serving.client import RestClient
from tfstack.serving.door import direct_replicas, frontend_container
from tfstack.serving.metrics import Scrape, Window, merge, scrape, window
from tfstack.serving.waiting import ModelExpectation, ModelsReady, Poll
from tfstack.spec import StackSpec
from tfstack.spec.model import SpecificPolicy, sample_body
from tfstack.spec.slo import SloSpec

ROLE_CANARY = "canary"
LABEL_CANARY_VERSION = "org.tfstack.canary-version"
CANARY_CONFIG = f"{render.CONFIG_DIR}/canary/models.config"
"""The canary's models.config, under the config directory every replica mounts at /config."""
CONTAINER_CANARY_CONFIG = "/config/canary/models.config"
CANARY_READY_TIMEOUT_S = 180.0
CANARY_STOP_GRACE_S = 10
CANARY_DRAIN_S = 1.0  # after the share is 0: requests the door already sent finish
ADMIN_TIMEOUT_S = 10
WARMUP_ROUNDS = 5
WARMUP_TIMEOUT_S = 30.0  # one warm-up request; a first request may load a big model's kernels


# --------------------------------------------------------------------------------------------
# Pure: the canary's config and container, the door's commands


def canary_spec(spec: StackSpec, model: str, version: int) -> StackSpec:
    """The spec as the canary replica serves it: ``model`` at ``version`` only, no labels."""
    models = [
        m.model_copy(update={"policy": SpecificPolicy(specific=[version]), "labels": {}})
        if m.name == model
        else m
        for m in spec.models
    ]
    return spec.model_copy(update={"models": models})


def canary_config_text(
    spec: StackSpec, spec_path: Path, root: Path, model: str, version: int
) -> str:
    """The canary's models.config, rendered like the replicas' own."""
    files = render.render_stack(canary_spec(spec, model, version), spec_path, root)
    return files[render.MODELS_CONFIG]


@dataclass(frozen=True)
class CanaryContainer:
    """The canary replica as ``docker create`` arguments (pure data, shown by ``--dry-run``)."""

    name: str
    image: str
    command: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    user: str
    environment: tuple[str, ...]
    network: str
    labels: Mapping[str, str]
    host_config: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"canary replica {self.name} ({self.image}) on network {self.network}"


_HOST_CONFIG_KEYS = (
    "Binds",
    "Mounts",
    "ReadonlyRootfs",
    "Tmpfs",
    "SecurityOpt",
    "CapDrop",
    "CapAdd",
    "NanoCpus",
    "CpuShares",
    "CpusetCpus",
    "Memory",
    "MemorySwap",
    "PidsLimit",
    "Ulimits",
    "ShmSize",
)


def plan_canary(
    replica: Mapping[str, Any], *, project: str, model: str, version: int
) -> CanaryContainer:
    """A clone of a running serving replica (``replica``: its ``docker inspect``) whose
    ``--model_config_file`` is the canary's config."""
    config = replica.get("Config") or {}
    host = replica.get("HostConfig") or {}
    networks = list(((replica.get("NetworkSettings") or {}).get("Networks") or {}).keys())
    if not networks:
        raise RolloutError(
            f"serving replica {replica.get('Name', '?')} is on no network",
            model=model,
            version=version,
            step="canary_start",
            hint="start the stack with `invoke up` first",
        )
    flag = "--model_config_file="
    command = tuple(
        f"{flag}{CONTAINER_CANARY_CONFIG}" if str(word).startswith(flag) else str(word)
        for word in config.get("Cmd") or ()
    )
    if not any(word.startswith(flag) for word in command):
        command += (f"{flag}{CONTAINER_CANARY_CONFIG}",)
    entrypoint = config.get("Entrypoint")
    return CanaryContainer(
        name=canary_host(project),
        image=str(config.get("Image", "")),
        command=command,
        entrypoint=tuple(entrypoint) if entrypoint else None,
        user=str(config.get("User", "")),
        environment=tuple(config.get("Env") or ()),
        network=networks[0],
        labels={
            LABEL_PROJECT: project,
            LABEL_MANAGED: "true",
            LABEL_ROLE: ROLE_CANARY,
            LABEL_MODEL: model,
            LABEL_CANARY_VERSION: str(version),
        },
        host_config={k: host[k] for k in _HOST_CONFIG_KEYS if host.get(k) not in (None, "", 0)},
    )


def share_commands(map_file: str, model: str, percent: int) -> str:
    """The runtime-API line that sets ``model``'s canary share (0 removes it)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"share {percent} is outside 0..100")
    line = f"del map {map_file} {model}"
    if percent > 0:
        line += f"; add map {map_file} {model} {percent}"
    return f"{line}; show map {map_file}"


def parse_map(text: str) -> dict[str, int]:
    """``show map`` output (``<id> <key> <value>`` lines) as key -> int value."""
    shares: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0].startswith("0x"):
            with contextlib.suppress(ValueError):
                shares[words[1]] = int(words[2])
    return shares


# --------------------------------------------------------------------------------------------
# Effects: the canary container


def existing_canary(client: Any, project: str) -> Any | None:
    """The project's canary container (any state), or None."""
    selector = [f"{LABEL_PROJECT}={project}", f"{LABEL_ROLE}={ROLE_CANARY}"]
    found = client.containers.list(all=True, filters={"label": selector})
    return found[0] if found else None


def canary_replica(client: Any, canary: Any, *, rest_port: int, grpc_port: int) -> Replica:
    """The canary container at its own network address, as the replicas are reached."""
    found = direct_replicas(
        client, [container_info(canary)], rest_port=rest_port, grpc_port=grpc_port
    )
    if not found:
        raise StackError(f"the canary replica {canary.name} is not running or has no address")
    return found[0]


def _logs_tail(container: Any, lines: int = 15) -> list[str]:
    with contextlib.suppress(docker.errors.APIError):
        text = str(container.logs(tail=lines).decode(errors="replace"))
        return text.splitlines()
    return []


def start_canary(
    client: Any,
    plan: CanaryContainer,
    *,
    model: str,
    version: int,
    rest_port: int,
    grpc_port: int,
    timeout: float = CANARY_READY_TIMEOUT_S,
    say: Say = lambda text: None,
) -> Replica:
    """Create and start the canary replica (or keep a running one of the same version) and wait
    until it serves ``model`` at ``version`` AVAILABLE. Raises RolloutError with its log tail."""
    current = existing_canary(client, plan.labels[LABEL_PROJECT])
    if current is not None:
        same = current.labels.get(LABEL_CANARY_VERSION) == str(version)
        if same and current.status == "running" and current.labels.get(LABEL_MODEL) == model:
            say(f"      {current.name}: already running version {version}")
        else:
            current.remove(force=True)
            current = None
    if current is None:
        api = client.api
        created = api.create_container(
            plan.image,
            command=list(plan.command),
            entrypoint=list(plan.entrypoint) if plan.entrypoint else None,
            user=plan.user or None,
            environment=list(plan.environment),
            labels=dict(plan.labels),
            name=plan.name,
            host_config=api.create_host_config(
                restart_policy={"Name": "unless-stopped"},
                network_mode=plan.network,
                **_host_config_kwargs(plan.host_config),
            ),
            networking_config=api.create_networking_config(
                {plan.network: api.create_endpoint_config()}
            ),
        )
        api.start(created["Id"])
        current = client.containers.get(created["Id"])
        say(f"      started {plan.describe()}")
    replica = canary_replica(client, current, rest_port=rest_port, grpc_port=grpc_port)
    expectation = ModelExpectation(model, (version,), {})
    try:
        with RestClient(replica.rest_url, timeout=10) as rest:
            ModelsReady(rest, [expectation], Poll(timeout=timeout, interval=0.5)).wait()
    except TfstackError as exc:
        raise RolloutError(
            f"the canary replica {plan.name} did not serve version {version} AVAILABLE",
            model=model,
            version=version,
            step="canary_start",
            evidence=[*str(exc).splitlines()[:6], *_logs_tail(current)],
            hint=f"see `docker logs {plan.name}`",
        ) from exc
    return replica


def _host_config_kwargs(host: Mapping[str, Any]) -> dict[str, Any]:
    """docker-py's create_host_config keyword names for the cloned HostConfig keys."""
    names = {
        "Binds": "binds",
        "ReadonlyRootfs": "read_only",
        "Tmpfs": "tmpfs",
        "SecurityOpt": "security_opt",
        "CapDrop": "cap_drop",
        "CapAdd": "cap_add",
        "NanoCpus": "nano_cpus",
        "CpuShares": "cpu_shares",
        "CpusetCpus": "cpuset_cpus",
        "Memory": "mem_limit",
        "MemorySwap": "memswap_limit",
        "PidsLimit": "pids_limit",
        "ShmSize": "shm_size",
    }
    kwargs: dict[str, Any] = {names[k]: v for k, v in host.items() if k in names}
    if host.get("Mounts"):
        kwargs["mounts"] = [_mount(m) for m in host["Mounts"]]
    return kwargs


def _mount(spec: Mapping[str, Any]) -> Mount:
    bind = spec.get("BindOptions") or {}
    return Mount(
        target=spec["Target"],
        source=spec.get("Source", ""),
        type=spec.get("Type", "bind"),
        read_only=bool(spec.get("ReadOnly", False)),
        propagation=bind.get("Propagation"),
    )


# --------------------------------------------------------------------------------------------
# Warm-up: the model's samples at the candidate version, before the door may route to it


WarmupPost = Callable[[str, Mapping[str, Any], int], Sequence[object]]
"""``post(path, body, rounds)``: POST ``body`` to the canary at ``path`` (e.g.
``/v1/models/m/versions/2:predict``) ``rounds`` times; one answer per request sent: the int
``200`` when answered 200, else the status or what came instead. It may stop after the first
answer that is not 200. Each target reaches its canary its own way (this host's HTTP client; a
probe on the Swarm's overlay)."""


@dataclass(frozen=True)
class WarmupRequest:
    """One of the model's samples as the canary is warmed with it."""

    sample: str
    path: str  # REST path at the candidate version
    body: Mapping[str, Any]


def warmup_requests(
    spec: StackSpec, spec_path: Path, *, model: str, version: int
) -> list[WarmupRequest]:
    """The model's samples (``body`` or ``body_file``) as REST requests at ``version``."""
    found = next((m for m in spec.models if m.name == model), None)
    if found is None:
        raise UsageError(f"the spec has no model {model!r}")
    made = []
    for sample in found.samples:
        body = dict(sample_body(sample, spec_path))
        if sample.signature_name:
            body.setdefault("signature_name", sample.signature_name)
        path = f"/v1/models/{model}/versions/{version}:{sample.method}"
        made.append(WarmupRequest(sample.name, path, body))
    return made


def warm_up_canary(
    post: WarmupPost,
    samples: Sequence[WarmupRequest],
    *,
    model: str,
    version: int,
    canary: str,
    logs: str,
    rounds: int = WARMUP_ROUNDS,
    step: str = "canary_start",
) -> int:
    """Send each warm-up request ``rounds`` times through ``post``; how many were sent.

    ``canary`` names it in the error (``the canary replica tfstack-demo-canary``), ``logs`` is
    the command that shows its log. RolloutError, before any traffic, when a request is not
    answered 200: the side instance answered the same samples, so the canary itself is wrong.
    """
    sent = 0
    for request in samples:
        answers = list(post(request.path, request.body, rounds))
        sent += len(answers)
        if answers != [200] * rounds:
            raise RolloutError(
                f"{canary} does not answer sample {request.sample!r}: {answers}",
                model=model,
                version=version,
                step=step,
                evidence=[f"POST {request.path}, {rounds} rounds expected 200 each"],
                hint=f"the side instance answered this sample; the canary's log says why: `{logs}`",
            )
    return sent


def rest_warmup_post(rest: RestClient) -> WarmupPost:
    """:data:`WarmupPost` through this host's REST client (the canary at its own address, the
    client's session: no proxy, its headers); the status is the server's own, checked exactly."""

    def post(path: str, body: Mapping[str, Any], rounds: int) -> list[object]:
        answers: list[object] = []
        for _ in range(rounds):
            try:
                response = rest.session.post(
                    rest.base_url + path,
                    json=dict(body),
                    timeout=rest.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                answers.append(f"no answer: {type(exc).__name__}: {str(exc)[:200]}")
                break
            if response.status_code != 200:
                answers.append(f"HTTP {response.status_code}: {response.text.strip()[:300]}")
                break
            answers.append(200)
        return answers

    return post


def remove_canary(client: Any, project: str, *, grace_s: int = CANARY_STOP_GRACE_S) -> str:
    """Stop (with the drain grace) and remove the project's canary replica; what was done."""
    current = existing_canary(client, project)
    if current is None:
        return "no canary replica left"
    name = current.name
    with contextlib.suppress(docker.errors.APIError):
        current.stop(timeout=grace_s)
    with contextlib.suppress(docker.errors.NotFound):
        current.remove(force=True)
    return f"canary replica {name} stopped and removed"


# --------------------------------------------------------------------------------------------
# Effects: the door's share


class DoorShell(Protocol):
    """Where the door's runtime API is reached: a command run inside the door's container."""

    @property
    def name(self) -> str: ...

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        """Run ``argv`` in the door's container: exit code and output."""
        ...


@dataclass(frozen=True)
class ContainerShell:
    """The compose door: ``docker exec`` through the SDK on this host's engine."""

    container: Any

    @property
    def name(self) -> str:
        return str(self.container.name)

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        try:
            result = self.container.exec_run(list(argv), demux=False)
        except docker.errors.APIError as exc:
            raise StackError(f"cannot reach the door's runtime API in {self.name}: {exc}") from exc
        return int(result.exit_code or 0), (result.output or b"").decode(errors="replace")


def door_container(client: Any, containers: Iterable[ContainerInfo]) -> ContainerShell:
    """The running door among the project's containers, as a shell into it."""
    door = frontend_container(containers)
    if door is None or door.state != "running":
        raise StackError(
            "the stack's front door is not running",
            hint="`invoke up` starts it; `invoke status` shows the stack",
        )
    return ContainerShell(client.containers.get(door.id))


def admin_argv(line: str) -> list[str]:
    """The command that sends one runtime-API line to the door on its container's loopback."""
    script = f'exec 3<>/dev/tcp/127.0.0.1/{DOOR_ADMIN_PORT} && printf "%s\\n" "$1" >&3 && cat <&3'
    return ["bash", "-c", script, "door-admin", line]


def door_admin(door: DoorShell, line: str) -> str:
    """One runtime-API line inside the door's container (its API listens on its loopback)."""
    exit_code, output = door.run(admin_argv(line))
    if exit_code != 0:
        raise StackError(
            f"the door's runtime API in {door.name} failed (exit {exit_code}): "
            f"{output.strip()[:300]}",
            hint="re-render and restart the door (`invoke up`) if it predates weighted canaries",
        )
    return output


def set_share(door: DoorShell, map_file: str, model: str, percent: int) -> dict[str, int]:
    """Set ``model``'s canary share at the door and read it back; RolloutError if it did not
    take."""
    shares = parse_map(door_admin(door, share_commands(map_file, model, percent)))
    if shares.get(model, 0) != percent:
        raise RolloutError(
            f"the door did not take canary share {percent}% (it reports {shares})",
            model=model,
            step="traffic",
        )
    return shares


# --------------------------------------------------------------------------------------------
# Analysis windows


@dataclass
class Analysis:
    """How one traffic step was judged: every window's decision, the last one final."""

    percent: int
    decisions: list[Decision] = field(default_factory=list)

    @property
    def final(self) -> Decision:
        return self.decisions[-1]

    def summary(self) -> str:
        final = self.final
        gates = "; ".join(g.line() for g in final.gates) or "no gates"
        return f"{self.percent}%: {final.outcome} after {final.window_seconds:.0f}s ({gates})"


MetricsReader = Callable[[Sequence[str], float], list[Scrape]]
"""Reads metrics pages (URLs) at a moment: this host's HTTP client, or a probe on an overlay."""


def _scrape_all(urls: Sequence[str], at: float) -> list[Scrape]:
    return [scrape(url, at=at) for url in urls]


def analyze(
    slo: SloSpec,
    model: str,
    percent: int,
    *,
    candidate_urls: Sequence[str],
    stable_urls: Sequence[str],
    window_s: float,
    max_window_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    read: MetricsReader = _scrape_all,
    say: Say = lambda text: None,
) -> Analysis:
    """Measure candidate and stable over windows of ``window_s`` until the gates pass, breach or
    stop (too little traffic by ``max_window_s``)."""
    analysis = Analysis(percent)
    limits = slo.model_copy(
        update={"window_seconds": max(1, round(window_s)), "max_window_seconds": max_window_s}
    )
    started = clock()
    first_candidate = read(candidate_urls, started)
    first_stable = read(stable_urls, started)
    wait = window_s
    while True:
        sleep(max(0.0, started + wait - clock()))
        now = clock()
        candidate = _window(first_candidate, read(candidate_urls, now), model)
        stable = _window(first_stable, read(stable_urls, now), model)
        decision = evaluate(limits, candidate, stable, elapsed_seconds=now - started)
        analysis.decisions.append(decision)
        say(f"      {percent}% window {now - started:.0f}s: {decision.message}")
        if decision.outcome != "extend":
            return analysis
        wait = decision.next_window_seconds or (wait + window_s)


def gated_traffic_step(
    door: DoorShell,
    slo: SloSpec,
    *,
    model: str,
    version: int,
    percent: int,
    step_name: str,
    window_s: float,
    candidate_urls: Sequence[str],
    stable_urls: Sequence[str],
    read: MetricsReader = _scrape_all,
    say: Say = lambda text: None,
) -> str:
    """One ``traffic_<P>`` step on any target: set the share at the door, judge the windows;
    on a breach (or too little traffic) the share goes back to 0 at once and RolloutError
    carries every gate's figure. Returns the analysis summary when the gates hold."""
    set_share(door, CONTAINER_CANARY_MAP, model, percent)
    say(f"      door: {percent}% of unversioned {model} requests -> version {version}")
    analysis = analyze(
        slo,
        model,
        percent,
        candidate_urls=candidate_urls,
        stable_urls=stable_urls,
        window_s=window_s,
        max_window_s=max(float(slo.max_window_seconds), window_s),
        read=read,
        say=say,
    )
    final = analysis.final
    if final.outcome == "pass":
        return analysis.summary()
    # Traffic off the candidate at once; the abort that follows removes the canary.
    with contextlib.suppress(TfstackError):
        set_share(door, CONTAINER_CANARY_MAP, model, 0)
    verdict = "rolled back" if final.outcome == "breach" else "stopped"
    raise RolloutError(
        f"version {version} at {percent}% {verdict}: {final.message}",
        model=model,
        version=version,
        step=step_name,
        evidence=[line.strip() for line in final.report()[1:]],
        hint="the measured figures are next to each gate above; the journal keeps them",
    )


def _window(before: Sequence[Scrape], after: Sequence[Scrape], model: str) -> Window:
    return merge(window(b, a, model) for b, a in zip(before, after, strict=True))


def metrics_url(replica: Replica, path: str) -> str:
    return f"{replica.rest_url}{path}"


def check_traffic_prerequisites(spec: StackSpec, model: str, *, door_on: bool) -> SloSpec:
    """What ``--traffic`` needs before anything changes: the model's gates, the front door and
    the replicas' metrics. Returns the gates; UsageError (exit 2) naming what is missing."""
    found = next((m for m in spec.models if m.name == model), None)
    if found is None:
        raise UsageError(f"the spec has no model {model!r}")
    if found.slo is None:
        raise UsageError(
            f"model {model} has no slo: --traffic needs gates to judge the candidate by",
            hint=f"add models[{model}].slo (error_rate, p99_ms, max_latency_ratio, min_requests; "
            "docs/spec.md), or roll out without --traffic",
        )
    if not door_on:
        raise UsageError(
            "--traffic needs the front door: it splits the traffic",
            hint="set frontend.enabled: true (or serving.replicas > 1) and run `invoke up`",
        )
    if not spec.monitoring.enabled:
        raise UsageError(
            "--traffic needs monitoring.enabled: true: the gates read the servers' metrics",
            hint="set monitoring.enabled: true and run `invoke up`",
        )
    return found.slo
