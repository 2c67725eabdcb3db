"""The model server: startup checks, model manager, gRPC and REST on one event loop, shutdown.

Startup follows upstream: flags are checked, the startup config is applied and every model must be
AVAILABLE (or failed: then startup fails) before any port opens; then gRPC, then REST. A config
file polled with ``--model_config_file_poll_wait_seconds`` is re-applied when it changes (a parse
error keeps the old config).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelserver import config as config_module
from modelserver import grpc_service
from modelserver.batch_scheduler import BatchingConfigError
from modelserver.batched_predictor import BatchedPredictor
from modelserver.dataplane import DataPlane
from modelserver.dispatch import InlinePolicy
from modelserver.errors import Code, ServingError, invalid_argument
from modelserver.flags import Flags
from modelserver.httpserver import HttpServer
from modelserver.manager import ManagerOptions, ModelManager, State
from modelserver.metrics import Metrics
from modelserver.rest import RestApi
from modelserver.servable import Servable, SessionOptions, load_servable
from modelserver.warmup import run_warmup

log = logging.getLogger("modelserver.server")


class StartupError(Exception):
    """The server cannot start; ``str`` is what follows ``Failed to start server. Error: ``."""


@dataclass(frozen=True)
class Endpoints:
    grpc_port: int
    rest_port: int | None


def session_options(flags: Flags) -> SessionOptions:
    intra = flags.tensorflow_intra_op_parallelism
    inter = flags.tensorflow_inter_op_parallelism
    session = flags.tensorflow_session_parallelism
    if intra > 0 and inter > 0 and session > 0:
        raise invalid_argument(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism). both cannot be set."
        )
    if not (intra > 0 and inter > 0):
        intra = inter = max(session, 0)
    tags = tuple(t.strip() for t in flags.saved_model_tags.split(",") if t.strip()) or ("serve",)
    return SessionOptions(intra_op_parallelism=intra, inter_op_parallelism=inter, tags=tags)


def startup_config(flags: Flags) -> Any:
    """The ModelServerConfig of the command line (config file, or name + base path)."""
    if flags.model_config_file:
        return config_module.load_model_server_config(flags.model_config_file)
    if not flags.model_base_path:
        raise invalid_argument(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    return config_module.single_model_config(flags.model_name, flags.model_base_path)


class ModelServer:
    """One server instance. ``host`` and port overrides exist for in-process tests (0 = any)."""

    def __init__(
        self,
        flags: Flags,
        *,
        host: str = "0.0.0.0",
        grpc_port: int | None = None,
        rest_port: int | None = None,
        loader: Callable[[str, int, str], Servable] | None = None,
    ) -> None:
        self.flags = flags
        self.host = host
        self.grpc_port = flags.port if grpc_port is None else grpc_port
        self.rest_port = (flags.rest_api_port or None) if rest_port is None else rest_port
        self._check_flags()
        self.session_options = session_options(flags)
        self.monitoring = (
            config_module.load_monitoring_config(flags.monitoring_config_file)
            if flags.monitoring_config_file
            else config_module.MonitoringConfig()
        )
        self.metrics = Metrics(enabled=self.monitoring.enable)
        self.batcher: BatchedPredictor | None = None
        # Where REST handlers run (event loop or pool); warmup teaches it. Batching handlers
        # wait on other requests and never run inline.
        self.rest_inline = InlinePolicy(enabled=not flags.enable_batching)
        self._loader = loader or self._load
        retries = flags.max_num_load_retries
        self.manager = ModelManager(
            ManagerOptions(
                file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
                max_num_load_retries=max(retries, 0),
                load_retry_interval_micros=max(flags.load_retry_interval_micros, 0),
                allow_version_labels=flags.allow_version_labels,
                allow_version_labels_for_unavailable_models=(
                    flags.allow_version_labels_for_unavailable_models
                ),
                num_load_threads=flags.num_load_threads or 4,
            ),
            self._loader,
            on_event=self._on_model_event,
        )
        # Requests' view of the models; _setup_batching swaps in a batching plane.
        self.plane = DataPlane(self.manager, max_image_pixels=flags.max_image_pixels)
        threads = flags.rest_api_num_threads or min(16, 4 * (os.cpu_count() or 1))
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
        self._config_text: bytes | None = None
        self._grpc: Any = None
        self._rest: Any = None
        self._poll_task: asyncio.Task[None] | None = None
        self._trim_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self.draining = False
        # Only configured models get metric series: request names come from clients.
        self.metrics.known_model = lambda name: name in self.manager.model_names()
        self.endpoints: Endpoints | None = None

    def _check_flags(self) -> None:
        flags = self.flags
        if flags.batching_parameters_file and not flags.enable_batching:
            raise invalid_argument(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        if flags.max_image_pixels < 0:
            raise invalid_argument(
                f"--max_image_pixels={flags.max_image_pixels} is negative; give the most pixels "
                "an image in a request may decode to, or 0 for no limit"
            )
        if flags.monitoring_config_file and not (self.rest_port or flags.rest_api_port):
            log.warning("--monitoring_config_file has no effect without --rest_api_port")

    # -- loading -------------------------------------------------------------------------------
    def _load(self, name: str, version: int, path: str) -> Servable:
        started = time.perf_counter()
        ok = False
        try:
            servable = load_servable(name, version, path, self.session_options)
            try:
                if self.flags.enable_model_warmup:
                    run_warmup(
                        servable,
                        self.flags.num_request_iterations_for_warmup,
                        on_cost=lambda api, seconds: self._learn_cost(name, api, seconds),
                    )
            except BaseException:
                servable.close(timeout=0)
                raise
            ok = True
            return servable
        finally:
            self.metrics.record_load(path, ok, (time.perf_counter() - started) * 1e6)

    def _learn_cost(self, name: str, api: str, seconds: float) -> None:
        """A warm warmup run of ``name``'s ``api`` took ``seconds``: teach the inline policy."""
        self.rest_inline.note((api, name), seconds)

    def _on_model_event(
        self, kind: str, name: str, version: int, state: State, error: ServingError | None
    ) -> None:
        if kind == "state" and state == State.END and self.batcher is not None:
            self.batcher.forget(name, version)

    def reload(self, server_config: Any, timeout: float | None = None) -> None:
        """Apply a ModelServerConfig (full replace); blocks until new models are AVAILABLE, at
        most ``timeout`` seconds (then DEADLINE_EXCEEDED naming the models still waiting; the
        config stays applied and they are served once loadable)."""
        models = config_module.model_configs(server_config)
        if timeout is None:
            self.manager.apply_config(models, wait=True)
            self._config_text = server_config.SerializeToString(deterministic=True)
            return
        # apply_config's own wait has no bound: wait here, on the same models it would wait on.
        previous = set(self.manager.model_names())
        self.manager.apply_config(models, wait=False)
        new_names = [model.name for model in models if model.name not in previous]
        try:
            if new_names:
                self.manager.wait_until_settled(new_names, timeout)
        except ServingError as error:
            if error.code != Code.DEADLINE_EXCEEDED:
                raise
            waiting = _unsettled(self.manager, [m for m in models if m.name in new_names])
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"Reload did not finish within {timeout:.1f} s: {waiting}; "
                "the new config stays applied and these models are served once a version loads "
                "(check the base paths hold a loadable version directory)",
            ) from None
        self._config_text = server_config.SerializeToString(deterministic=True)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> Endpoints:
        """Load the startup models, then open gRPC and REST; raises StartupError."""
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            self._setup_batching()
            server_config = startup_config(self.flags)
            await loop.run_in_executor(None, self.reload, server_config)
        except ServingError as error:
            self.manager.stop()
            self.plane.close()
            raise StartupError(str(error)) from error
        self.manager.start()
        await self._start_grpc()
        if self.rest_port is not None:
            await self._start_rest()
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll_config())
        self._trim_task = asyncio.create_task(_return_memory())
        assert self.endpoints is not None
        return self.endpoints

    def _setup_batching(self) -> None:
        """With --enable_batching, one batch scheduler for all models."""
        if not self.flags.enable_batching:
            return
        try:
            self.batcher = BatchedPredictor.from_file(self.flags.batching_parameters_file)
        except (BatchingConfigError, OSError) as exc:
            raise invalid_argument(
                f"Invalid batching parameters file {self.flags.batching_parameters_file}: {exc}"
            ) from exc
        self.plane = DataPlane(
            self.manager, self.batcher, max_image_pixels=self.flags.max_image_pixels
        )

    async def _start_grpc(self) -> None:
        services = grpc_service.Services(
            self.plane,
            self.metrics,
            self.reload,
            tensor_content=self.flags.enable_serialization_as_tensor_content,
        )
        server = grpc_service.build_server(
            services,
            grpc_service.channel_arguments(self.flags.grpc_channel_arguments),
            self.flags.grpc_max_threads,
            batching=self.batcher is not None,
        )
        address = f"{self.host}:{self.grpc_port}"
        port = server.add_insecure_port(address)
        if port == 0:
            raise StartupError(f"UNAVAILABLE: Could not bind the gRPC server to {address}")
        socket_path = self.flags.grpc_socket_path
        # Like upstream: the same services on a Unix socket as well (gRPC replaces a stale file).
        if socket_path and server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise StartupError(
                f"UNAVAILABLE: Could not bind the gRPC server to the Unix socket {socket_path} "
                "(--grpc_socket_path): check that its directory exists and is writable"
            )
        server.start()
        self._grpc = server
        self.endpoints = Endpoints(port, None)
        log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", port)
        if socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", socket_path)

    async def _start_rest(self) -> None:
        app = RestApi(
            self.plane,
            self.executor,
            self.metrics,
            metrics_path=self.monitoring.path if self.monitoring.enable else None,
            max_body_bytes=self.flags.rest_api_max_body_bytes,
            timeout_seconds=self.flags.rest_api_timeout_in_ms / 1000,
            inline=self.rest_inline,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.rest_port or 0))
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"UNAVAILABLE: Could not bind the REST server to {self.host}:{self.rest_port}: "
                f"{exc.strerror}"
            ) from exc
        sock.listen(1024)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        server = HttpServer(
            app.handle,
            max_body_bytes=self.flags.rest_api_max_body_bytes,
            too_large=app.too_large,
            keep_alive_timeout=75.0,
            error_answer=app.refuse,
        )
        await server.start(sock)
        self._rest = server
        assert self.endpoints is not None
        self.endpoints = Endpoints(self.endpoints.grpc_port, port)
        log.info("Exporting HTTP/REST API at:localhost:%d ...", port)

    async def _poll_config(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.flags.model_config_file_poll_wait_seconds
        path = self.flags.model_config_file
        while True:
            await asyncio.sleep(interval)
            try:
                new_config = await loop.run_in_executor(
                    None, config_module.load_model_server_config, path
                )
            except config_module.ConfigParseError as error:
                log.error("%s; keeping the current config (%s)", error.parser_line, error)
                continue
            except ServingError as error:
                log.error("Could not reload %s: %s; keeping the current config", path, error)
                continue
            if new_config.SerializeToString(deterministic=True) == self._config_text:
                continue
            log.info("Model config file %s changed: reloading", path)
            try:
                await loop.run_in_executor(None, self.reload, new_config)
            except ServingError as error:
                log.error("Reloading %s failed: %s", path, error)

    def request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def wait(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (drain): stop accepting (listeners close, so readiness probes fail
        at once), let in-flight REST and gRPC requests finish within ``grace`` seconds, then
        close what is left and unload the models. ``grace`` defaults to
        ``--shutdown_grace_seconds``."""
        if grace is None:
            grace = self.flags.shutdown_grace_seconds
        self.draining = True
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self._trim_task is not None:
            self._trim_task.cancel()
        rest_stopped = None
        if self._rest is not None:
            rest_stopped = asyncio.ensure_future(self._rest.shutdown(grace))
        if self._grpc is not None:
            stopped = self._grpc.stop(grace)
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait, grace + 1)
        if rest_stopped is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rest_stopped, grace + 1)
        self.plane.close()
        # The grace is over: requests still holding a session were cut, do not wait for them.
        self.manager.stop(close_timeout=0)
        self.executor.shutdown(wait=False, cancel_futures=True)


TRIM_CHECK_SECONDS = 2.0
TRIM_GROWTH_BYTES = 64 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _return_memory() -> None:
    """Give freed heap back to the system after large requests (a 100 MB gRPC message, a big
    JSON body): glibc keeps it otherwise. Measured on half_plus_two after 3 x 100 MB gRPC and
    2 x 30 MB REST predicts, idle RSS 897 MB untrimmed, 760 MB trimmed, 735 MB trimmed with
    MALLOC_ARENA_MAX=2 (the image sets it). Cheap: a /proc read every 2 s, a trim only after
    RSS grew by 64 MB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
        baseline = _rss_bytes()
    except (OSError, AttributeError):
        return  # not glibc or no /proc: nothing to do
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(TRIM_CHECK_SECONDS)
        if _rss_bytes() > baseline + TRIM_GROWTH_BYTES:
            await loop.run_in_executor(None, trim, 0)
            baseline = _rss_bytes()


def _unsettled(manager: ModelManager, models: list[Any]) -> str:
    """``model a (base path /models/a): no version AVAILABLE`` for models not yet serving."""
    waiting = []
    for model in models:
        try:
            records = manager.status(model.name)
        except ServingError:
            records = []  # no version directory found yet
        if not any(record.state == State.AVAILABLE for record in records):
            waiting.append(
                f"model {model.name} (base path {model.base_path}) has no AVAILABLE version"
            )
    return "; ".join(waiting) or "models still loading"


__all__ = ["Code", "Endpoints", "ModelServer", "StartupError"]
