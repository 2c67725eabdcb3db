"""The model manager: aspired versions from the file system, loads, unloads, labels, routing.

It mirrors upstream's ServerCore + AspiredVersionsManager with the availability-preserving policy:

* a poller lists every model's base path (children whose names parse as int64) and applies the
  model's version policy to get the *aspired* versions;
* new aspired versions load in background threads (with retries), run warmup, then turn AVAILABLE;
* a version that is no longer aspired unloads only once an aspired version is AVAILABLE (or none is
  aspired any more), so a rollout never leaves a model without a serving version;
* labels are validated against AVAILABLE versions before any config change is applied.

Requests resolve servables through an immutable routing table swapped on every state change, so the
hot path takes no lock. The manager's lock guards only its bookkeeping: base paths are listed
before it is taken (a slow or hung file system must not stall status calls, loads and unloads),
and state callbacks run after it is released, in the order the states changed (a callback may
call back into the manager or block without holding up every other model).
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from modelserver.errors import (
    Code,
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    shown,
)
from modelserver.servable import Servable

log = logging.getLogger("modelserver.manager")

INT64_MAX = (1 << 63) - 1


class State(enum.IntEnum):
    """``ModelVersionStatus.State`` values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class ManagerOptions:
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    num_load_threads: int = 4


@dataclass
class VersionRecord:
    version: int
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    aspired: bool = True
    # The directory's real name under the base path (``00000123`` for version 123).
    directory: str = ""

    @property
    def directory_name(self) -> str:
        return self.directory or str(self.version)

    @property
    def failed(self) -> bool:
        return self.state == State.END and self.error is not None


@dataclass
class ModelEntry:
    name: str
    config: Any  # tensorflow.serving.ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    in_config: bool = True


@dataclass(frozen=True)
class ConfiguredModel:
    """A model of the current config as readiness sees it (see :meth:`ModelManager.configured`)."""

    name: str
    config: Any  # tensorflow.serving.ModelConfig
    labels: Mapping[str, int]
    available: frozenset[int]


@dataclass(frozen=True)
class Route:
    """What requests see of one model: AVAILABLE servables by version, the latest, the labels."""

    by_version: Mapping[int, Servable]
    latest: Servable | None
    labels: Mapping[str, int]


def parse_version(name: str) -> int | None:
    """A version directory name: digits only, parsed as int64 (``00000123`` is 123)."""
    if not name.isascii() or not name.isdigit():
        return None
    value = int(name)
    return value if value <= INT64_MAX else None


def version_directories(base_path: str) -> dict[int, str]:
    """Version -> directory name for the numeric child directories of ``base_path``
    (``00000123`` -> 123); ``OSError`` if it cannot be listed.

    Two names for one version (``123`` and ``0123``): like upstream, one is kept and the other
    ignored with a warning; here the name sorting last wins, so the choice is deterministic.
    """
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        names = [e.name for e in entries if parse_version(e.name) is not None and e.is_dir()]
    children = sorted(names)
    for name in children:
        version = parse_version(name)
        assert version is not None
        if version in found:
            log.warning(
                "Duplicate version directories detected under %s. Version %d will be loaded "
                "from %s, %s will be ignored.",
                base_path,
                version,
                name,
                found[version],
            )
        found[version] = name
    return found


def scan_base_path(name: str, base_path: str) -> dict[int, str] | None:
    """``version_directories`` of a model's base path, logging upstream's messages; None when it
    cannot be listed (the caller keeps the previous aspired versions, as upstream does)."""
    try:
        directories = version_directories(base_path)
    except OSError as exc:
        log.error(
            "File system storage path source: could not find base path %s for servable %s: %s",
            base_path,
            name,
            exc.strerror or exc,
        )
        return None
    if not directories:
        log.warning(
            "No versions of servable %s found under base path %s. Did you forget to name "
            "your leaf directory as a number (eg. '/1/')?",
            name,
            base_path,
        )
    return directories


def versions_on_disk(base_path: str) -> list[int]:
    """Numeric child directories of ``base_path``; ``OSError`` if it cannot be listed."""
    return sorted(version_directories(base_path))


def aspired_versions(config: Any, on_disk: list[int]) -> set[int]:
    """Apply a ModelConfig's version policy (default latest 1) to the versions found on disk."""
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(on_disk)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        missing = wanted - set(on_disk)
        if missing:
            log.warning(
                "Version(s) %s of servable %s not found under base path %s",
                sorted(missing),
                config.name,
                config.base_path,
            )
        return wanted & set(on_disk)
    count = policy.latest.num_versions if kind == "latest" else 1
    count = max(count, 1)
    return set(sorted(on_disk)[-count:])


def servable_id(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"


class ModelManager:
    """Owns every model's versions; thread-safe; one background poller plus a loader pool."""

    def __init__(
        self,
        options: ManagerOptions,
        loader: Callable[[str, int, str], Servable],
        *,
        on_event: Callable[[str, str, int, State, ServingError | None], None] | None = None,
    ) -> None:
        self.options = options
        self._loader = loader
        self._on_event = on_event
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # One config change at a time: it lists base paths between two holds of ``_lock``.
        self._config_lock = threading.Lock()
        # State changes recorded under ``_lock``, delivered to ``on_event`` after its release;
        # ``_delivery`` keeps deliveries from several threads in order.
        self._events: list[tuple[str, int, State, ServingError | None]] = []
        self._delivery = threading.Lock()
        self._models: dict[str, ModelEntry] = {}
        self._routes: dict[str, Route] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, options.num_load_threads), thread_name_prefix="model-load"
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poller: threading.Thread | None = None

    # -- configuration ---------------------------------------------------------------------------
    def apply_config(
        self, model_configs: Iterable[Any], *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Full-replace reload: validate (names, platform, paths, labels), apply, then block until
        models that were not in the previous config are AVAILABLE (or report those that failed),
        at most ``timeout`` seconds when given (then DEADLINE_EXCEEDED; the config stays)."""
        configs = list(model_configs)
        with self._config_lock:
            with self._lock:
                self._validate(configs)  # refuse a bad config before touching the disk
            scans = self._scan([(c.name, c.base_path) for c in configs])
            new_names = self._apply(configs, scans)
        if wait and new_names:
            self.wait_until_settled(new_names, timeout)

    def _scan(self, models: list[tuple[str, str]]) -> dict[str, dict[int, str] | None]:
        """Every model's version directories, listed without the manager's lock (none when
        the file system is not polled)."""
        if self.options.file_system_poll_wait_seconds < 0:
            return {}
        return {name: scan_base_path(name, base) for name, base in models}

    def _apply(self, configs: list[Any], scans: Mapping[str, dict[int, str] | None]) -> list[str]:
        """Apply a validated config and its scans; the names of models new to the config."""
        with self._locked():
            self._validate(configs)  # versions may have changed state during the scan
            new_names: list[str] = []
            wanted = {c.name for c in configs}
            for name, entry in self._models.items():
                if name not in wanted and entry.in_config:
                    log.info("Unloading model %s: it is no longer in the config", name)
                    entry.in_config = False
                    entry.labels = {}
                    for record in entry.versions.values():
                        record.aspired = False
            for config in configs:
                existing = self._models.get(config.name)
                if existing is None or not existing.in_config:
                    new_names.append(config.name)
                if existing is None:
                    existing = self._models[config.name] = ModelEntry(config.name, config)
                entry = existing
                entry.config = config
                entry.in_config = True
                entry.labels = dict(config.version_labels)
                if config.name in scans:
                    self._apply_scan(entry, scans[config.name])
            for entry in self._models.values():
                self._reconcile(entry)
            self._publish()
        return new_names

    def _validate(self, configs: list[Any]) -> None:
        seen: set[str] = set()
        for config in configs:
            if config.name in seen:
                raise invalid_argument(
                    f"Illegal to list model {config.name} multiple times in config list"
                )
            seen.add(config.name)
            if not config.model_platform:
                raise invalid_argument(
                    "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                    f"ModelConfig::model_platform (model {config.name})."
                )
            if config.model_platform != "tensorflow":
                raise invalid_argument(
                    f'Model {config.name} requested unsupported platform "{config.model_platform}";'
                    ' this server serves model_platform "tensorflow" only'
                )
            if not config.base_path.startswith("/") and "://" not in config.base_path:
                raise invalid_argument(
                    f"Expected model {config.name} to have an absolute path or URI; got "
                    f"base_path()={config.base_path}"
                )
            old = self._models.get(config.name)
            if (
                old is not None
                and old.in_config
                and old.config.model_platform != (config.model_platform)
            ):
                raise invalid_argument(
                    "Illegal to change a model's platform. For model "
                    f"{config.name} platform was {old.config.model_platform} and new platform "
                    f"requested is {config.model_platform}"
                )
        for config in configs:
            if not config.version_labels:
                continue
            if not self.options.allow_version_labels:
                raise failed_precondition(
                    "Model version labels are not currently allowed by the server."
                )
            old = self._models.get(config.name)
            available = set()
            old_labels: dict[str, int] = {}
            if old is not None:
                available = {v for v, r in old.versions.items() if r.state == State.AVAILABLE}
                old_labels = old.labels if old.in_config else {}
            for label, version in sorted(config.version_labels.items()):
                moves_existing = label in old_labels and old_labels[label] != version
                lenient = self.options.allow_version_labels_for_unavailable_models
                if (not lenient or moves_existing) and version not in available:
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {config.name},"
                        " which is not currently available for inference"
                    )

    # -- polling ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the file-system poller (periodic only when the poll interval is > 0)."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        interval = self.options.file_system_poll_wait_seconds
        while not self._stop.is_set():
            if interval > 0:
                self._wake.wait(interval)
                self._wake.clear()
                if self._stop.is_set():
                    return
                self.poll()
            else:
                self._stop.wait()

    def poll(self) -> None:
        """One pass over every configured model's base path (listed outside the lock)."""
        with self._config_lock:
            with self._lock:
                configs = {n: e.config for n, e in self._models.items() if e.in_config}
            found = {
                name: scan_base_path(name, config.base_path) for name, config in configs.items()
            }
            with self._locked():
                for name, entry in self._models.items():
                    # _config_lock kept the configs as scanned.
                    if name in found:
                        self._apply_scan(entry, found[name])
                    self._reconcile(entry)
                self._publish()

    def _apply_scan(self, entry: ModelEntry, directories: dict[int, str] | None) -> None:
        """Aspire the versions a scan found; a failed scan keeps the previous aspired versions,
        as upstream does on access errors."""
        if directories is None:
            return
        aspired = aspired_versions(entry.config, sorted(directories))
        for version, record in entry.versions.items():
            if version not in aspired:
                record.aspired = False
        for version in aspired:
            known = entry.versions.get(version)
            if known is None or (known.state == State.END and not known.aspired):
                entry.versions[version] = VersionRecord(version, directory=directories[version])
                self._emit(entry.name, version, State.START, None)
            else:
                known.aspired = True
                if known.state == State.START:
                    known.directory = directories[version]

    # -- transitions (called with the lock held) -----------------------------------------------
    def _reconcile(self, entry: ModelEntry) -> None:
        records = entry.versions.values()
        for record in records:
            if not record.aspired and record.state == State.START:
                self._set(entry, record, State.END)
        has_aspired = any(
            r.aspired and not (r.state == State.END and not r.failed) for r in records
        )
        has_aspired_serving = any(r.aspired and r.state == State.AVAILABLE for r in records)
        unaspired_serving = sorted(
            (r for r in records if not r.aspired and r.state == State.AVAILABLE),
            key=lambda r: r.version,
        )
        if unaspired_serving:
            if not has_aspired or has_aspired_serving:
                victims = unaspired_serving
            else:
                victims = unaspired_serving[:-1]
            for record in victims:
                self._unload(entry, record)
        for record in list(records):
            if record.aspired and record.state == State.START:
                self._set(entry, record, State.LOADING)
                self._pool.submit(self._load, entry.name, record)

    def _set(
        self,
        entry: ModelEntry,
        record: VersionRecord,
        state: State,
        error: ServingError | None = None,
    ) -> None:
        record.state = state
        record.error = error
        self._emit(entry.name, record.version, state, error)
        self._changed.notify_all()

    def _emit(self, name: str, version: int, state: State, error: ServingError | None) -> None:
        if error is None:
            log.info("Servable %s: state %s", servable_id(name, version), state.name)
        if self._on_event is not None:
            self._events.append((name, version, state, error))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock for a state change, then deliver the state events it recorded.

        Never entered while this thread already holds the lock: the events would then run
        under it."""
        try:
            with self._lock:
                yield
        finally:
            self._deliver_events()

    def _deliver_events(self) -> None:
        if self._on_event is None:
            return
        with self._delivery:
            with self._lock:
                events, self._events = self._events, []
            for name, version, state, error in events:
                self._on_event("state", name, version, state, error)

    def _load(self, name: str, record: VersionRecord) -> None:
        with self._lock:
            entry = self._models[name]
            path = os.path.join(entry.config.base_path, record.directory_name)
        attempt = 0
        while True:
            log.info("Loading servable version %s from %s", servable_id(name, record.version), path)
            started = time.monotonic()
            try:
                servable = self._loader(name, record.version, path)
                error: ServingError | None = None
            except ServingError as exc:
                error = exc
            except Exception as exc:  # a loader bug must still end as an error state
                log.exception("Unexpected error loading %s", servable_id(name, record.version))
                error = ServingError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}")
            if self._on_event is not None:
                self._on_event(
                    "load",
                    name,
                    record.version,
                    State.AVAILABLE if error is None else State.END,
                    error,
                )
            if error is None:
                log.info(
                    "Successfully loaded servable version %s in %.2fs",
                    servable_id(name, record.version),
                    time.monotonic() - started,
                )
                break
            log.error("Loading servable %s failed: %s", servable_id(name, record.version), error)
            if attempt >= self.options.max_num_load_retries or self._stop.is_set():
                with self._locked():
                    self._set(entry, record, State.END, error)
                    self._reconcile(entry)
                    self._publish()
                return
            with self._locked():
                if not record.aspired:
                    self._set(entry, record, State.END, error)
                    self._reconcile(entry)
                    self._publish()
                    return
            attempt += 1
            log.info(
                "Retrying load on servable version %s retry: %d",
                servable_id(name, record.version),
                attempt,
            )
            if self._stop.wait(self.options.load_retry_interval_micros / 1e6):
                return
        with self._locked():
            record.servable = servable
            self._set(entry, record, State.AVAILABLE)
            self._reconcile(entry)
            self._publish()

    def _unload(self, entry: ModelEntry, record: VersionRecord) -> None:
        servable = record.servable
        record.servable = None
        self._set(entry, record, State.UNLOADING)
        # Routes must stop naming the servable before it starts refusing requests; otherwise a
        # request resolving in between finds only a closing servable and fails.
        self._publish()

        def finish() -> None:
            if servable is not None:
                servable.close(timeout=60)
            with self._locked():
                self._set(entry, record, State.END)
                log.info(
                    "Done unloading servable version %s", servable_id(entry.name, record.version)
                )
                self._reconcile(entry)
                self._publish()

        self._pool.submit(finish)

    def _publish(self) -> None:
        routes: dict[str, Route] = {}
        for name, entry in self._models.items():
            by_version = {
                v: r.servable
                for v, r in entry.versions.items()
                if r.state == State.AVAILABLE and r.servable is not None
            }
            latest = by_version[max(by_version)] if by_version else None
            if by_version or entry.labels:
                routes[name] = Route(by_version, latest, dict(entry.labels))
        self._routes = routes

    # -- waiting ---------------------------------------------------------------------------------
    def wait_until_settled(self, names: Iterable[str], timeout: float | None = None) -> None:
        """Block until each model has aspired versions and all of them are AVAILABLE or failed;
        raise UNKNOWN ``N model(s) did not become available`` naming the failed versions."""
        names = list(names)
        deadline = None if timeout is None else time.monotonic() + timeout

        def settled() -> bool:
            for name in names:
                entry = self._models.get(name)
                if entry is None or not entry.in_config:
                    continue
                aspired = [r for r in entry.versions.values() if r.aspired]
                if not aspired:
                    return False
                if any(r.state not in (State.AVAILABLE, State.END) for r in aspired):
                    return False
            return True

        with self._lock:
            while not settled():
                if self._stop.is_set():
                    raise ServingError(Code.CANCELLED, "Server is shutting down")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ServingError(
                        Code.DEADLINE_EXCEEDED, "Timed out waiting for models to become available"
                    )
                self._changed.wait(timeout=0.5 if remaining is None else min(0.5, remaining))
            failed = [
                (name, r)
                for name in names
                if (entry := self._models.get(name)) is not None
                for r in sorted(entry.versions.values(), key=lambda r: r.version)
                if r.aspired and r.failed
            ]
        if failed:
            details = ", ".join(
                f"{servable_id(name, r.version)} due to error: {r.error}" for name, r in failed
            )
            raise ServingError(
                Code.UNKNOWN, f"{len(failed)} servable(s) did not become available: {{{details}}}"
            )

    # -- queries ---------------------------------------------------------------------------------
    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a request addresses (latest, specific version or label), or upstream's
        NOT_FOUND / INVALID_ARGUMENT error."""
        route = self._routes.get(name)
        if label is not None:
            if route is None or label not in route.labels:
                raise invalid_argument(f"Unrecognized servable version label: {shown(label)}")
            version = route.labels[label]
        if version is None:
            if route is None or route.latest is None:
                raise not_found(f"Servable not found for request: Latest({shown(name)})")
            return route.latest
        servable = route.by_version.get(version) if route is not None else None
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({shown(name)}, {version})")
        return servable

    @contextmanager
    def serving(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[Servable]:
        """Resolve and hold a servable for one request. A servable that starts unloading between
        resolution and use is resolved again, so a rollout never fails a request."""
        for _ in range(5):
            servable = self.resolve(name, version, label)
            if servable.try_acquire():
                try:
                    yield servable
                finally:
                    servable.release()
                return
        raise ServingError(Code.UNAVAILABLE, f"Model {shown(name)} is changing versions; retry")

    def label_version(self, name: str, label: str) -> int:
        route = self._routes.get(name)
        if route is None or label not in route.labels:
            raise invalid_argument(f"Unrecognized servable version label: {shown(label)}")
        return route.labels[label]

    def status(self, name: str, version: int | None = None) -> list[VersionRecord]:
        """Version records, newest first; upstream's NOT_FOUND texts when there are none."""
        with self._lock:
            entry = self._models.get(name)
            records = dict(entry.versions) if entry is not None else {}
            if version is not None:
                record = records.get(version)
                if record is None:
                    raise not_found(f"Could not find version {version} of model {shown(name)}")
                return [_copy(record)]
            if not records:
                raise not_found(f"Could not find any versions of model {shown(name)}")
            return [_copy(records[v]) for v in sorted(records, reverse=True)]

    def model_names(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._models.items() if e.in_config]

    def configured(self) -> list[ConfiguredModel]:
        """Each model of the current config: its config, labels and AVAILABLE versions, taken
        together under the lock (readiness reads them as one consistent picture)."""
        with self._lock:
            return [
                ConfiguredModel(
                    name=entry.name,
                    config=entry.config,
                    labels=dict(entry.labels),
                    available=frozenset(
                        v for v, r in entry.versions.items() if r.state == State.AVAILABLE
                    ),
                )
                for entry in self._models.values()
                if entry.in_config
            ]

    def snapshot(self) -> dict[str, list[VersionRecord]]:
        with self._lock:
            return {
                name: [_copy(r) for _, r in sorted(e.versions.items(), reverse=True)]
                for name, e in self._models.items()
            }

    # -- shutdown --------------------------------------------------------------------------------
    def stop(self, close_timeout: float = 5.0) -> None:
        """Stop polling and loading; close every loaded session, each after waiting at most
        ``close_timeout`` seconds for requests still holding it (0 after a drain whose grace has
        ended: those requests were cut and the process exits)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._changed.notify_all()
            servables = [
                r.servable for e in self._models.values() for r in e.versions.values() if r.servable
            ]
            self._routes = {}
        self._pool.shutdown(wait=False, cancel_futures=True)
        for servable in servables:
            servable.close(timeout=close_timeout)


def _copy(record: VersionRecord) -> VersionRecord:
    return VersionRecord(
        record.version, record.state, record.error, None, record.aspired, record.directory
    )
