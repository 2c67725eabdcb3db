"""Temporary containers on testcontainers' ``DockerContainer``: one implementation for every
short-lived container tfstack starts (the rollout's side instance, the ISA probe, the bench's
servers, the public test kit).

:class:`TemporaryContainer` adds what every such container needs: ``org.tfstack.*`` labels (the
sweep that replaces testcontainers' Ryuk, which needs a registry image, selects on them), a check
that the image is on the engine before anything starts (a pull could only fail here), ports
published on 127.0.0.1 only, the log tail, and removal even when starting or waiting fails.

:class:`ServingContainer` runs ``tensorflow_model_server`` from either the official
``tensorflow/serving`` image or tfstack's drop-in runtime image: both entrypoints run the server on
gRPC 8500 and REST 8501 and append the container's arguments, so a ``--model_config_file`` (which
the server prefers over ``--model_name``/``--model_base_path``) selects the models. Models are
mounted read-only under ``/models/<name>``; the config and batching files are copied into the
container before it starts (no host temp directory to clean up, and remote engines work). Its wait
strategy, :class:`ModelsAvailable`, polls the REST model-status API until every expected version is
AVAILABLE, fails fast when a version ends in an error or the server exits, and on timeout says what
it last saw plus the server's log tail.

The pure part (:func:`plan_serving`) builds flags, files and expectations without Docker.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import docker.errors
import requests
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

from tfstack.core import textproto
from tfstack.core.labels import LABEL_MANAGED, LABEL_ROLE
from tfstack.core.modelstatus import VersionState, parse_version_status
from tfstack.core.versions import version_dirs
from tfstack.errors import StackError, UsageError

LOOPBACK = "127.0.0.1"
GRPC_PORT = 8500
REST_PORT = 8501
MODELS_ROOT = "/models"
CONFIG_ROOT = "/tfstack-config"
MODEL_CONFIG_PATH = f"{CONFIG_ROOT}/models.config"
BATCHING_CONFIG_PATH = f"{CONFIG_ROOT}/batching.config"
READY_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.25
LOG_TAIL_LINES = 30
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

# Ryuk (testcontainers' reaper) runs an image from a registry, which is unreachable here; tfstack
# removes its containers itself and sweeps by label.
testcontainers_config.ryuk_disabled = True


# --------------------------------------------------------------------------------------------
# Model directories


def saved_model_versions(base_path: Path) -> tuple[int, ...]:
    """Version numbers under a TF Serving base path: version folders holding a SavedModel."""
    if not base_path.is_dir():
        return ()
    return tuple(
        sorted(
            {
                found.version
                for found in version_dirs(base_path)
                if any((base_path / found.name / file).is_file() for file in SAVED_MODEL_FILES)
            }
        )
    )


def check_model_dir(name: str, base_path: Path) -> tuple[int, ...]:
    """The versions of ``base_path``; UsageError naming the path and the fix when it has none."""
    where = f"model '{name}': {base_path}"
    if not base_path.exists():
        raise UsageError(
            f"{where} does not exist",
            hint="pass the folder that holds the numbered version folders, e.g. models/<name> "
            "containing 1/saved_model.pb",
        )
    if not base_path.is_dir():
        raise UsageError(
            f"{where} is a file, not a model folder",
            hint="pass the folder that holds the numbered version folders (1/saved_model.pb)",
        )
    versions = saved_model_versions(base_path)
    if versions:
        return versions
    if any((base_path / file).is_file() for file in SAVED_MODEL_FILES):
        raise UsageError(
            f"{where} is a SavedModel itself, not a base path with numbered versions",
            hint=f"TF Serving loads <base>/<version>/saved_model.pb: move it into "
            f"{base_path}/1/ or pass its parent folder after placing it in a folder named 1",
        )
    raise UsageError(
        f"{where} holds no SavedModel: no numbered version folder with saved_model.pb",
        hint="export the model with tf.saved_model.save(model, f'{base}/1') (or run "
        "`./tfstack models` for the demo models) and pass the base folder",
    )


# --------------------------------------------------------------------------------------------
# The plan (pure)


@dataclass(frozen=True)
class ServingPlan:
    """What a serving container runs: image, read-only mounts, files copied in, flags, waits."""

    image: str
    command: tuple[str, ...]
    mounts: Mapping[str, str]  # host path -> container path (read-only)
    files: Mapping[str, str]  # container path -> text
    expected: Mapping[str, tuple[int, ...]]  # model -> versions to wait for (() = all it reports)
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        models = ", ".join(
            f"{name} v{'/'.join(str(v) for v in versions) or '*'}"
            for name, versions in self.expected.items()
        )
        return f"{self.image} serving {models or 'no models'} (ports on {LOOPBACK})"


def model_config_text(models: Mapping[str, str]) -> str:
    """A models.config serving each model (name -> container base path) with the default policy."""
    blocks = "".join(
        "  config {\n"
        f"    name: {textproto.quote(name)}\n"
        f"    base_path: {textproto.quote(path)}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n"
        for name, path in models.items()
    )
    return "model_config_list {\n" + blocks + "}\n"


_CONFIG_NAME = re.compile(r"""\bname\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")


def config_model_names(config: str) -> list[str]:
    """The model names a models.config text declares (textproto ``name:`` fields)."""
    return [double or single for double, single in _CONFIG_NAME.findall(config)]


def plan_serving(
    image: str,
    *,
    models: Mapping[str, str | Path] | None = None,
    model_config: str | None = None,
    batching: str | None = None,
    expected_versions: Mapping[str, Sequence[int]] | None = None,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> ServingPlan:
    """Plan a serving container; UsageError for bad input, before any container exists.

    ``models`` maps model names to host base paths (mounted read-only at ``/models/<name>``);
    without ``model_config`` each is served with TF Serving's default policy (its highest version,
    which is what the wait expects). ``model_config`` is a models.config text used instead (its
    base paths are container paths, usually ``/models/<name>``); the wait then expects the
    versions in ``expected_versions`` or, for models not listed there, every version the server
    reports. ``batching`` is a batching-parameters text: it turns batching on. ``flags`` are
    appended last, so they override the ones built here.
    """
    if not image:
        raise UsageError("no serving image given", hint="pass image='tensorflow/serving:latest'")
    models = dict(models or {})
    if not models and model_config is None:
        raise UsageError(
            "a serving container needs models: pass models={'name': 'path/to/model'} "
            "or model_config='model_config_list {...}'",
        )
    mounts: dict[str, str] = {}
    versions_on_disk: dict[str, tuple[int, ...]] = {}
    for name, path in models.items():
        if not name or "/" in name:
            raise UsageError(
                f"model name {name!r} is not usable as a folder name",
                hint="use a plain name such as 'half_plus_two'",
            )
        host = Path(path).expanduser().resolve()
        versions_on_disk[name] = check_model_dir(name, host)
        mounts[str(host)] = f"{MODELS_ROOT}/{name}"
    expected: dict[str, tuple[int, ...]] = {}
    if model_config is None:
        config = model_config_text({name: f"{MODELS_ROOT}/{name}" for name in models})
        for name, versions in versions_on_disk.items():
            expected[name] = (max(versions),)  # the default policy serves the latest version
    else:
        config = model_config
        names = config_model_names(config)
        if not names:
            raise UsageError(
                "model_config declares no model (no `name:` field)",
                hint='write model_config_list { config { name: "m" base_path: "/models/m" } }',
            )
        for name in names:
            expected[name] = ()
    for name, wanted in (expected_versions or {}).items():
        if name not in expected:
            raise UsageError(
                f"expected_versions names model '{name}', which is not served "
                f"(served: {', '.join(expected) or 'none'})",
            )
        expected[name] = tuple(sorted({int(v) for v in wanted}))
    files = {MODEL_CONFIG_PATH: config}
    command = [f"--port={GRPC_PORT}", f"--rest_api_port={REST_PORT}"]
    command.append(f"--model_config_file={MODEL_CONFIG_PATH}")
    if batching is not None:
        files[BATCHING_CONFIG_PATH] = batching
        command += ["--enable_batching=true", f"--batching_parameters_file={BATCHING_CONFIG_PATH}"]
    command += list(flags)
    all_labels = {LABEL_MANAGED: "true", LABEL_ROLE: "serving"} | dict(labels or {})
    bad = [key for key in all_labels if not key.startswith("org.tfstack.")]
    if bad:
        raise UsageError(
            f"labels {', '.join(bad)} are outside the org.tfstack.* namespace",
            hint="name them org.tfstack.<something>: cleanup selects on that namespace",
        )
    return ServingPlan(
        image=image,
        command=tuple(command),
        mounts=mounts,
        files=files,
        expected=expected,
        env=dict(env or {}),
        labels=all_labels,
    )


# --------------------------------------------------------------------------------------------
# Readiness (pure)


Observed = Mapping[str, "list[VersionState] | str"]  # model -> statuses, or what the server said


@dataclass(frozen=True)
class ReadinessVerdict:
    """How far the models are: all ready, failed versions (model, version, error), or pending."""

    ready: bool
    failures: tuple[tuple[str, int, str], ...]
    seen: tuple[str, ...]  # one line per model, for messages


def assess_models(expected: Mapping[str, tuple[int, ...]], observed: Observed) -> ReadinessVerdict:
    """Compare expected versions (``()``: every reported one, at least one) with the server's."""
    ready = True
    failures: list[tuple[str, int, str]] = []
    seen: list[str] = []
    for name, versions in expected.items():
        answer = observed.get(name, "no answer yet")
        if isinstance(answer, str):
            ready = False
            seen.append(f"{name}: {answer}")
            continue
        by_version = {status.version: status for status in answer}
        wanted = versions or tuple(sorted(by_version))
        for status in answer:
            if status.failed and status.version in wanted:
                failures.append(
                    (name, status.version, f"{status.error_code}: {status.error_message}")
                )
        if not wanted or not all(v in by_version and by_version[v].available for v in wanted):
            ready = False
        states = ", ".join(f"v{s.version} {s.state}" for s in answer) or "no versions"
        expecting = ", ".join(str(v) for v in versions) or "all"
        seen.append(f"{name}: {states} (expected {expecting})")
    return ReadinessVerdict(ready and not failures, tuple(failures), tuple(seen))


# --------------------------------------------------------------------------------------------
# Containers


def _log_lines(raw: bytes) -> list[str]:
    return [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]


class TemporaryContainer(DockerContainer):
    """A ``DockerContainer`` that tfstack labels, publishes on 127.0.0.1 and always removes.

    ``labels`` must be in the ``org.tfstack.*`` namespace (``org.tfstack.managed=true`` is added);
    ``**docker_kwargs`` go to the docker SDK's ``containers.create`` (``user``, ``cpu_shares``,
    ``nano_cpus``, ``mem_limit``, ``entrypoint``, ``security_opt``...). Use it as a context
    manager, or call :meth:`start` and :meth:`stop`; a failed start removes the container.
    """

    def __init__(
        self,
        image: str,
        *,
        command: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        docker_client_kw: Mapping[str, Any] | None = None,
        **docker_kwargs: Any,
    ) -> None:
        all_labels = {LABEL_MANAGED: "true"} | dict(labels or {})
        super().__init__(
            image,
            docker_client_kw=dict(docker_client_kw or {}),
            env=dict(env or {}),
            name=name,
            labels=all_labels,
            **docker_kwargs,
        )
        self.labels = all_labels
        if command is not None:
            self.with_command(list(command))

    def publish_on_loopback(self, *ports: int) -> TemporaryContainer:
        """Publish container ports on ephemeral 127.0.0.1 host ports (never on every interface)."""
        bindings: dict[str, Any] = self.ports  # docker-py accepts (host_ip, host_port) pairs
        for port in ports:
            bindings[f"{port}/tcp"] = (LOOPBACK, None)
        return self

    def start(self) -> TemporaryContainer:
        client = self.get_docker_client().client
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            self.get_docker_client().client.close()
            raise StackError(
                f"image {self.image} is not present on the engine (no registry is reachable to "
                "pull it)",
                hint="build it (`./tfstack images` builds tfstack/serving-runtime:latest) or load "
                "it with `docker load`",
            ) from None
        try:
            super().start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container (a container already gone is fine) and close the client."""
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=force, v=delete_volume)
        self.get_docker_client().client.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def container(self) -> Any:
        """The docker SDK container (None before start and after stop)."""
        return self._container

    def host_port(self, port: int) -> int:
        """The 127.0.0.1 host port a container port is published on."""
        container = self.get_wrapped_container()
        container.reload()
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(
            f"{port}/tcp"
        )
        if not bindings:
            raise StackError(
                f"container {container.name} has no published port {port} "
                f"(state {container.status})",
                log_tail=self.log_tail(),
                hint="the server probably exited at start; the log lines above say why",
            )
        return int(bindings[0]["HostPort"])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last log lines (stdout and stderr), or a line saying why there are none."""
        if self._container is None:
            return []
        try:
            return _log_lines(self._container.logs(tail=lines))
        except docker.errors.DockerException as exc:
            return [f"(logs unavailable: {exc})"]

    def exit_state(self) -> str | None:
        """None while the container runs; else a phrase such as "exited with code 1"."""
        container = self.get_wrapped_container()
        container.reload()
        if container.status not in ("exited", "dead"):
            return None
        state = container.attrs.get("State", {})
        text = f"exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            text += " (killed: out of memory)"
        return text


def run_once(
    image: str,
    command: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    **docker_kwargs: Any,
) -> bytes:
    """Run ``command`` in a temporary container to completion and return its stdout.

    StackError (with the log tail) when it exits non-zero or runs longer than ``timeout`` s; the
    container is removed in every case.
    """
    with TemporaryContainer(image, command=command, labels=labels, **docker_kwargs) as temporary:
        container = temporary.get_wrapped_container()
        try:
            code = int(container.wait(timeout=timeout).get("StatusCode", -1))
        except (requests.ConnectionError, requests.Timeout):
            raise StackError(
                f"{image} {' '.join(command)} did not finish within {timeout:.0f}s",
                log_tail=temporary.log_tail(),
            ) from None
        if code != 0:
            raise StackError(
                f"{image} {' '.join(command)} exited with code {code}",
                log_tail=temporary.log_tail(),
            )
        return bytes(container.logs(stdout=True, stderr=False))


class ServingNotReady(StackError):
    """A serving container's models did not become AVAILABLE: a version failed, the server
    exited, or time ran out. ``summary`` is the message without the log lines; ``failures`` lists
    (model, version, error) of versions that ended in an error."""

    def __init__(
        self,
        summary: str,
        *,
        failures: Sequence[tuple[str, int, str]] = (),
        log_tail: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(summary, log_tail=log_tail, hint=hint)
        self.summary = summary
        self.failures = list(failures)


ModelStatusFetch = Callable[[str], "list[VersionState] | str"]


class ModelsAvailable(WaitStrategy):
    """Wait until every expected model version is AVAILABLE on a :class:`ServingContainer`.

    Fails fast (:class:`ServingNotReady`) when an expected version ends with an error or the server
    exits; on timeout it says the last states seen and carries the server's log tail. ``clock``
    and ``sleep`` are injectable so unit tests never sleep.
    """

    def __init__(
        self,
        expected: Mapping[str, tuple[int, ...]],
        *,
        timeout: float = READY_TIMEOUT_S,
        interval: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.expected = dict(expected)
        self.timeout = timeout
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.waited_s = 0.0

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        if not isinstance(container, ServingContainer):
            raise TypeError("ModelsAvailable waits on a ServingContainer")
        self.wait(
            container.fetch_model_status,
            exited=container.exit_state,
            log_tail=container.log_tail,
        )

    def wait(
        self,
        fetch: ModelStatusFetch,
        *,
        exited: Callable[[], str | None],
        log_tail: Callable[[], list[str]],
    ) -> float:
        """Seconds until ready; the loop behind :meth:`wait_until_ready`."""
        start = self.clock()
        verdict = assess_models(self.expected, {})
        last_error = ""
        while True:
            gone = exited()
            if gone is not None:
                raise ServingNotReady(
                    f"the serving container {gone} before its models were AVAILABLE "
                    f"(last seen: {'; '.join(verdict.seen)})",
                    log_tail=log_tail(),
                    hint="the server's log lines above say why (a bad flag, model or config)",
                )
            try:
                observed = {name: fetch(name) for name in self.expected}
                last_error = ""
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"the REST port does not answer yet ({type(exc).__name__})"
            else:
                verdict = assess_models(self.expected, observed)
                if verdict.failures:
                    lines = "; ".join(f"{m} version {v}: {why}" for m, v, why in verdict.failures)
                    raise ServingNotReady(
                        f"model versions failed to load: {lines}",
                        failures=verdict.failures,
                        log_tail=log_tail(),
                        hint="fix or re-export the version named above",
                    )
                if verdict.ready:
                    self.waited_s = self.clock() - start
                    return self.waited_s
            waited = self.clock() - start
            if waited >= self.timeout:
                seen = "; ".join(verdict.seen)
                if last_error:
                    seen += f"; {last_error}"
                raise ServingNotReady(
                    f"models not AVAILABLE after {waited:.0f}s (last seen: {seen})",
                    log_tail=log_tail(),
                    hint="a big model may need a longer startup timeout; the log lines above "
                    "show how far loading got",
                )
            self.sleep(min(self.interval, max(self.timeout - waited, 0.0)))


class ServingContainer(TemporaryContainer):
    """A temporary ``tensorflow_model_server`` container that is ready when its models are.

    Works with the official ``tensorflow/serving`` image and tfstack's runtime image
    (``tfstack/serving-runtime:latest``). ``models``, ``model_config``, ``batching``,
    ``expected_versions``, ``flags``, ``env`` and ``labels`` are as in :func:`plan_serving` (bad
    input raises UsageError here, before any container exists). gRPC 8500 and REST 8501 are
    published on 127.0.0.1; :attr:`rest_url` and :attr:`grpc_target` say where.
    """

    def __init__(
        self,
        image: str,
        *,
        models: Mapping[str, str | Path] | None = None,
        model_config: str | None = None,
        batching: str | None = None,
        expected_versions: Mapping[str, Sequence[int]] | None = None,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        startup_timeout: float = READY_TIMEOUT_S,
        docker_client_kw: Mapping[str, Any] | None = None,
        **docker_kwargs: Any,
    ) -> None:
        plan = plan_serving(
            image,
            models=models,
            model_config=model_config,
            batching=batching,
            expected_versions=expected_versions,
            flags=flags,
            env=env,
            labels=labels,
        )
        super().__init__(
            plan.image,
            command=plan.command,
            labels=plan.labels,
            env=plan.env,
            name=name,
            docker_client_kw=docker_client_kw,
            **docker_kwargs,
        )
        self.plan = plan
        self.publish_on_loopback(GRPC_PORT, REST_PORT)
        for host, target in plan.mounts.items():
            self.with_volume_mapping(host, target, "ro")
        for target, text in plan.files.items():
            self.with_copy_into_container(text.encode("utf-8"), target, 0o644)
        self.models_available = ModelsAvailable(plan.expected, timeout=startup_timeout)
        self.waiting_for(self.models_available)
        self._session = requests.Session()
        self._rest_base: str | None = None

    @property
    def rest_url(self) -> str:
        """``http://127.0.0.1:<port>``: the REST API's base URL."""
        return f"http://{LOOPBACK}:{self.host_port(REST_PORT)}"

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<port>``: the gRPC target for a channel."""
        return f"{LOOPBACK}:{self.host_port(GRPC_PORT)}"

    @property
    def ready_s(self) -> float:
        """Seconds the models took to become AVAILABLE after the container started."""
        return self.models_available.waited_s

    def fetch_model_status(self, model: str) -> list[VersionState] | str:
        """The model's version statuses, or the server's error text (e.g. 404 while unknown)."""
        if self._rest_base is None:
            self._rest_base = self.rest_url
        response = self._session.get(f"{self._rest_base}/v1/models/{model}", timeout=5)
        if response.status_code != 200:
            try:
                return str(response.json().get("error", response.text))
            except ValueError:
                return f"HTTP {response.status_code}: {response.text[:200]}"
        return parse_version_status(response.json())

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        self._session.close()
        self._rest_base = None
        super().stop(force=force, delete_volume=delete_volume)
