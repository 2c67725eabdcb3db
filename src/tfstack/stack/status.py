"""What a stack is doing right now: models, versions, labels and services, as data.

:func:`observe` asks the engine (containers) and the server (REST) and returns a
:class:`StackStatus`; :meth:`StackStatus.to_json` is the stable ``invoke status --json`` document
described in docs/status-json.md (bump ``SCHEMA_VERSION`` on any incompatible change);
:func:`render_table` lays it out with rich for people.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.console import Group
from rich.table import Table
from rich.text import Text

from tfstack.docker.compose import ContainerInfo, LastExit, published_address
from tfstack.rollout.journal import status_summary
from tfstack.serving.client import RestClient
from tfstack.serving.door import DoorStatus
from tfstack.serving.waiting import ModelExpectation, ModelObservation, assess, observe_model

COMPOSE_NUMBER_LABEL = "com.docker.compose.container-number"

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    labels: tuple[str, ...] = ()
    declared: bool = True
    error_code: str | None = None
    error_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        error = None
        if self.error_code not in (None, "", "OK") or self.error_message:
            error = {"code": self.error_code or "UNKNOWN", "message": self.error_message or ""}
        return {
            "version": self.version,
            "state": self.state,
            "labels": list(self.labels),
            "declared": self.declared,
            "error": error,
        }


@dataclass(frozen=True)
class LabelStatus:
    name: str
    declared: int | None  # the version the spec gives it
    serving: int | None  # the version the server resolves it to (None: unknown to the server)

    def to_json(self) -> dict[str, Any]:
        return {"declared": self.declared, "serving": self.serving}


@dataclass(frozen=True)
class ModelStatus:
    name: str
    declared_versions: tuple[int, ...]
    versions: tuple[VersionStatus, ...] = ()
    labels: tuple[LabelStatus, ...] = ()
    error: str | None = None  # the server's answer when it knows no version of the model

    @property
    def ok(self) -> bool:
        states = {v.version: v.state for v in self.versions}
        return (
            self.error is None
            and all(states.get(v) == "AVAILABLE" for v in self.declared_versions)
            and all(label.serving == label.declared for label in self.labels)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "declared_versions": list(self.declared_versions),
            "versions": [v.to_json() for v in self.versions],
            "labels": {label.name: label.to_json() for label in self.labels},
            "error": self.error,
        }


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    container: str
    container_id: str
    state: str
    health: str | None
    started_at: str
    image_id: str
    exit_code: int | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)  # "rest"/"grpc" -> address
    replica: int | None = None  # Compose's container number (1..N with serving.replicas: N)
    models_ok: bool | None = None  # every declared version and label AVAILABLE on this replica
    problems: tuple[str, ...] = ()  # what this replica still lacks (model: why)
    restart_count: int = 0  # restarts by the restart policy (crash, OOM kill, engine restart)
    last_exit: LastExit | None = None  # how the previous run ended, if it ever stopped

    @property
    def ok(self) -> bool:
        """Running, not unhealthy ("starting" is fine: model states are checked directly), and
        not known to lack a declared model version or label."""
        return (
            self.state == "running" and self.health != "unhealthy" and self.models_ok is not False
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "container": self.container,
            "container_id": self.container_id,
            "state": self.state,
            "health": self.health,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "image_id": self.image_id,
            "endpoints": dict(self.endpoints),
            "replica": self.replica,
            "models_ok": self.models_ok,
            "problems": list(self.problems),
            "restart_count": self.restart_count,
            "last_exit": self.last_exit.to_json() if self.last_exit is not None else None,
        }


@dataclass(frozen=True)
class StackStatus:
    project: str
    spec: str
    observed_at: str
    endpoints: Mapping[str, str]
    services: tuple[ServiceStatus, ...] = ()
    models: tuple[ModelStatus, ...] = ()
    server_error: str | None = None  # the REST API did not answer at all
    rollout: Mapping[str, Any] | None = None  # filled by the rollout work; None when idle
    frontend: DoorStatus | None = None  # the front door's view; None when the spec has no door

    @property
    def ok(self) -> bool:
        return (
            bool(self.services)
            and all(s.ok for s in self.services)
            and self.server_error is None
            and all(m.ok for m in self.models)
            and (self.frontend is None or self.frontend.ok)
        )

    def describe(self) -> list[Any]:
        """What ``status`` prints for people: the tables of :func:`render_table`."""
        return [render_table(self)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "project": self.project,
            "spec": self.spec,
            "observed_at": self.observed_at,
            "ok": self.ok,
            "endpoints": dict(self.endpoints),
            "server_error": self.server_error,
            "services": [s.to_json() for s in self.services],
            "models": [m.to_json() for m in self.models],
            "rollout": dict(self.rollout) if self.rollout is not None else None,
            "frontend": self.frontend.to_json() if self.frontend is not None else None,
        }


# --------------------------------------------------------------------------------------------
# Building from observations (pure)


def service_status(
    container: ContainerInfo, *, host: str, rest_port: int, grpc_port: int
) -> ServiceStatus:
    """A container's own published REST/gRPC addresses (as the engine reports them)."""
    endpoints: dict[str, str] = {}
    for name, port in (("rest", rest_port), ("grpc", grpc_port)):
        address = published_address(container, port, host)
        if address is not None:
            endpoints[name] = f"http://{address}" if name == "rest" else address
    number = container.labels.get(COMPOSE_NUMBER_LABEL, "")
    return ServiceStatus(
        name=container.service,
        container=container.name,
        container_id=container.id,
        state=container.state,
        health=container.health,
        started_at=container.started_at,
        image_id=container.image_id,
        exit_code=container.exit_code,
        endpoints=endpoints,
        replica=int(number) if number.isdigit() else None,
        restart_count=container.restart_count,
        last_exit=container.last_exit,
    )


def replica_problems(
    expectations: Sequence[ModelExpectation], observed: Mapping[str, ModelObservation]
) -> tuple[str, ...]:
    """What one replica lacks: ``model: why`` per pending model, ``model vN: error`` per failure."""
    readiness = assess(expectations, observed)
    lines = [f"{model}: {why}" for model, why in readiness.pending.items()]
    lines += [f"{model} v{version}: {message}" for model, version, message in readiness.failures]
    return tuple(lines)


def model_status(
    expectation: ModelExpectation, observation: ModelObservation | None
) -> ModelStatus:
    """Join what the spec declares with what the server reports for one model."""
    if observation is None or observation.error is not None:
        return ModelStatus(
            expectation.name,
            expectation.versions,
            labels=tuple(
                LabelStatus(name, version, None)
                for name, version in sorted(expectation.labels.items())
            ),
            error=observation.error if observation else "not observed",
        )
    by_version: dict[int, list[str]] = {}
    for label, version in observation.labels.items():
        if version is not None:
            by_version.setdefault(version, []).append(label)
    versions = tuple(
        VersionStatus(
            version=state.version,
            state=state.state,
            labels=tuple(sorted(by_version.get(state.version, []))),
            declared=state.version in expectation.versions,
            error_code=state.error_code,
            error_message=state.error_message,
        )
        for state in observation.versions
    )
    labels = tuple(
        LabelStatus(name, version, observation.labels.get(name))
        for name, version in sorted(expectation.labels.items())
    )
    return ModelStatus(expectation.name, expectation.versions, versions, labels)


@dataclass(frozen=True)
class StartFailure:
    """A model version that failed to load when the server started (recorded by ``up``'s
    degraded start: the server runs without the model, so it cannot report the error itself)."""

    model: str
    version: int
    error: str  # the server's text, e.g. "DATA_LOSS: Can't parse .../saved_model.pb"

    @property
    def code(self) -> str:
        head = self.error.split(":", 1)[0].strip()
        return head if head and head.replace("_", "").isalpha() and head.isupper() else "UNKNOWN"

    @property
    def message(self) -> str:
        """The error without its leading status code (the code is reported apart)."""
        if self.code != "UNKNOWN" or self.error.startswith("UNKNOWN:"):
            return self.error.split(":", 1)[1].strip()
        return self.error

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StartFailure:
        return cls(str(data["model"]), int(data["version"]), str(data["error"]))


def with_start_failures(status: StackStatus, failures: Sequence[StartFailure]) -> StackStatus:
    """Show each recorded start failure as version state END with its error, for models the
    server does not know (left out of its config); a model the server reports is left as is."""
    by_model: dict[str, list[StartFailure]] = {}
    for failure in failures:
        by_model.setdefault(failure.model, []).append(failure)
    models = []
    for model in status.models:
        recorded = by_model.get(model.name)
        if not recorded or model.versions or status.server_error is not None:
            models.append(model)
            continue
        versions = tuple(
            VersionStatus(
                version=f.version,
                state="END",
                declared=f.version in model.declared_versions,
                error_code=f.code,
                error_message=f.message,
            )
            for f in sorted(recorded, key=lambda f: f.version)
        )
        models.append(dataclasses.replace(model, versions=versions, error=None))
    return dataclasses.replace(status, models=tuple(models))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def observe(
    *,
    project: str,
    spec_path: str,
    rest: RestClient,
    expectations: Sequence[ModelExpectation],
    containers: Sequence[ContainerInfo],
    host: str,
    rest_port: int,
    grpc_port: int,
    rollout: Mapping[str, Any] | None = None,
    rest_for: Callable[[str], RestClient] | None = None,
    replica_urls: Mapping[str, str] | None = None,
) -> StackStatus:
    """Ask the server about every declared model (REST) and combine with the containers.

    ``models`` come from ``rest`` (the spec's REST port). With several running replicas and
    ``rest_for`` (base URL -> client), every replica is also asked on its own published port and
    its service entry says whether it serves every declared version and label (``models_ok``,
    ``problems``); with one replica that verdict comes from the same observation. Behind the
    front door replicas publish nothing: ``replica_urls`` (container name -> REST URL on the
    project network) says where to ask them.
    """
    services = [
        service_status(c, host=host, rest_port=rest_port, grpc_port=grpc_port) for c in containers
    ]
    server_error: str | None = None
    models: list[ModelStatus] = []
    observations: dict[str, ModelObservation] = {}
    running = any(s.state == "running" for s in services)
    for expectation in expectations:
        observation: ModelObservation | None = None
        if running and server_error is None:
            try:
                observation = observe_model(rest, expectation)
                observations[expectation.name] = observation
            except (requests.ConnectionError, requests.Timeout) as exc:
                server_error = (
                    f"the REST API at {rest.base_url} does not answer: {type(exc).__name__}"
                )
        if observation is None:
            observation = ModelObservation(
                expectation.name,
                error=server_error or "no serving container is running",
            )
        models.append(model_status(expectation, observation))
    if not running:
        server_error = "no serving container is running"
    live = [i for i, s in enumerate(services) if s.state == "running"]
    if len(live) == 1 and server_error is None:
        problems = replica_problems(expectations, observations)
        services[live[0]] = dataclasses.replace(
            services[live[0]], models_ok=not problems, problems=problems
        )
    elif len(live) > 1 and rest_for is not None:
        for index in live:
            services[index] = _ask_replica(
                services[index], expectations, rest_for, (replica_urls or {}).get
            )
    if rollout is None:
        rollout = _rollouts_in_progress(project, spec_path)
    return StackStatus(
        project=project,
        spec=spec_path,
        observed_at=now_iso(),
        endpoints={"rest": f"http://{host}:{rest_port}", "grpc": f"{host}:{grpc_port}"},
        services=tuple(services),
        models=tuple(models),
        server_error=server_error,
        rollout=rollout,
    )


def _ask_replica(
    service: ServiceStatus,
    expectations: Sequence[ModelExpectation],
    rest_for: Callable[[str], RestClient],
    direct_url: Callable[[str], str | None],
) -> ServiceStatus:
    """The service entry with this replica's own verdict (asked on its published REST port, or
    on its network address when it publishes none)."""
    url = service.endpoints.get("rest") or direct_url(service.container)
    if url is None:
        return dataclasses.replace(
            service, models_ok=False, problems=("its REST port is not published",)
        )
    client = rest_for(url)
    try:
        observed = {e.name: observe_model(client, e) for e in expectations}
    except (requests.ConnectionError, requests.Timeout) as exc:
        return dataclasses.replace(
            service,
            models_ok=False,
            problems=(f"the REST API at {url} does not answer: {type(exc).__name__}",),
        )
    finally:
        client.close()
    problems = replica_problems(expectations, observed)
    return dataclasses.replace(service, models_ok=not problems, problems=problems)


def _rollout_line(model: str, info: Any) -> str:
    """One line per unfinished rollout (journal summary) for the table."""
    if not isinstance(info, Mapping):
        return f"rollout in progress: {model}: {info}"
    text = (
        f"{info.get('action', 'rollout')} of {model} to version {info.get('version')}: "
        f"{info.get('state')} at step {info.get('step')}"
    )
    if info.get("error"):
        text += f" ({info['error']})"
    if info.get("next"):
        text += f"; next: {info['next']}"
    return text


def _rollouts_in_progress(project: str, spec_path: str) -> Mapping[str, Any] | None:
    """Unfinished rollouts from the journals under ``<root>/state/rollouts/<project>/``."""

    try:
        return status_summary(Path(spec_path).resolve().parent.parent, project)
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Rendering for people

_STATE_STYLE = {
    "AVAILABLE": "green",
    "LOADING": "yellow",
    "START": "yellow",
    "UNLOADING": "yellow",
    "END": "red",
}


def _restarts_cell(service: ServiceStatus) -> Text:
    """``2 (last: killed by SIGKILL at 2026-...)``; the last exit shows even without a restart."""
    count = str(service.restart_count)
    if service.last_exit is None:
        return Text(count)
    last = f"{count} (last: {service.last_exit.reason} at {service.last_exit.finished_at[:19]})"
    return Text(last, style="yellow" if service.restart_count else "")


def _door_table(door: DoorStatus) -> Any:
    """The door's view: per backend and replica slot, rotation, last check, requests, errors."""
    rest, grpc = (len(door.in_rotation(b)) for b in ("rest", "grpc"))
    head = Text(
        f"front door {door.container} ({door.state}): in rotation REST {rest}, gRPC {grpc}"
        + (f"; {door.error}" if door.error else ""),
        style="green" if door.ok else "red",
    )
    table = Table(expand=False)
    columns = ("backend", "slot", "replica", "status", "check", "requests", "errors", "retries")
    for column in columns:
        table.add_column(column, overflow="fold")
    for server in door.servers:
        table.add_row(
            server.backend,
            server.slot,
            server.container or server.address or "no address",
            Text(server.status, style="green" if server.in_rotation else "red"),
            server.check or "-",
            str(server.requests),
            Text(str(server.errors), style="red" if server.errors else ""),
            str(server.retries),
        )
    if not door.servers:
        table.add_row("-", "-", "-", Text(door.state, style="red"), "-", "-", "-", "-")
    return Group(head, table)


def render_table(status: StackStatus) -> Any:
    """A rich renderable: a models table, a services table and the endpoints."""

    models = Table(title=f"models of {status.project}", title_justify="left", expand=False)
    for column in ("model", "version", "state", "labels", "error"):
        models.add_column(column, overflow="fold")
    for model in status.models:
        if model.error is not None or not model.versions:
            models.add_row(model.name, "-", Text("UNKNOWN", style="red"), "", model.error or "")
        for version in model.versions:
            style = _STATE_STYLE.get(version.state, "")
            name = f"v{version.version}" + ("" if version.declared else " (undeclared)")
            error = version.to_json()["error"]
            models.add_row(
                model.name,
                name,
                Text(version.state, style=style),
                ", ".join(version.labels),
                f"{error['code']}: {error['message']}" if error else "",
            )
        for label in model.labels:
            if label.serving != label.declared:
                models.add_row(
                    model.name,
                    f"label {label.name}",
                    Text("PENDING", style="yellow"),
                    f"declared v{label.declared}",
                    "server resolves it to "
                    + (str(label.serving) if label.serving is not None else "nothing"),
                )
    services = Table(title="services", title_justify="left", expand=False)
    for column in ("service", "container", "state", "health", "restarts", "models", "endpoints"):
        services.add_column(column, overflow="fold")
    for service in status.services:
        state = service.state + (
            f" (exit {service.exit_code})" if service.exit_code is not None else ""
        )
        if service.models_ok is None:
            verdict = Text("-")
        elif service.models_ok:
            verdict = Text("all ready", style="green")
        else:
            verdict = Text("; ".join(service.problems) or "not ready", style="red")
        name = service.name + (f" #{service.replica}" if service.replica is not None else "")
        services.add_row(
            name,
            f"{service.container} ({service.container_id[:12]})",
            Text(state, style="green" if service.state == "running" else "red"),
            service.health or "-",
            _restarts_cell(service),
            verdict,
            "  ".join(f"{k} {v}" for k, v in sorted(service.endpoints.items())),
        )
    if not status.services:
        services.add_row("-", "no containers", Text("down", style="red"), "-", "-", "-", "")
    parts: list[Any] = [models, services]
    if status.frontend is not None:
        parts.append(_door_table(status.frontend))
    if status.server_error:
        parts.append(Text(f"server: {status.server_error}", style="red"))
    for name, info in sorted((status.rollout or {}).items()):
        parts.append(Text(_rollout_line(name, info), style="yellow"))
    verdict = Text("OK" if status.ok else "NOT OK", style="bold green" if status.ok else "bold red")
    parts.append(Text.assemble("stack ", verdict, f"  (observed {status.observed_at})"))
    return Group(*parts)
