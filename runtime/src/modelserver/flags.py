"""The command line of upstream's ``tensorflow_model_server``.

Accepts ``--flag=value`` and ``--flag value``; booleans as ``--x``, ``--x=true|false|1|0``. Unknown
arguments print ``unknown argument: ...`` and are ignored (upstream warns and continues). A value
that does not parse is an error (upstream prints its usage and exits). The last occurrence wins, so
arguments appended after the image's defaults override them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class FlagError(ValueError):
    """A flag value that does not parse."""


@dataclass
class Flags:
    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 0
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    enable_batching: bool = False
    enable_per_model_batching_parameters: bool = False
    allow_version_labels: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    batching_parameters_file: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    num_load_threads: int = 0
    num_unload_threads: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    file_system_poll_wait_seconds: int = 1
    flush_filesystem_caches: bool = True
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    ssl_config_file: str = ""
    platform_config_file: str = ""
    per_process_gpu_memory_fraction: float = 0.0
    saved_model_tags: str = "serve"
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    version: bool = False
    monitoring_config_file: str = ""
    remove_unused_fields_from_bundle_metagraph: bool = True
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 1
    num_tflite_interpreters_per_pool: int = 1
    enable_signature_method_name_check: bool = False
    xla_cpu_compilation_enabled: bool = False
    enable_profiler: bool = True
    enable_grpc_healthcheck_service: bool = False
    enable_serialization_as_tensor_content: bool = False
    use_alts_credentials: bool = False
    xla_gpu_compilation_enabled: bool = False
    skip_initialize_tpu: bool = False
    mixed_precision: str = ""
    thread_pool_factory_config_file: str = ""
    # Not upstream: the largest REST request body accepted (bytes); bigger bodies get 413.
    rest_api_max_body_bytes: int = 256 << 20
    # Not upstream: on SIGTERM/SIGINT, seconds in-flight requests get to finish before the server
    # exits (keep it under the container's stop timeout: Docker's default is 10 s).
    shutdown_grace_seconds: float = 8.0
    # Not upstream: the most pixels (width x height x frames) an image in a Predict's string
    # inputs may declare in its header (models decode images in their graph); 0 = no limit.
    max_image_pixels: int = 50_000_000
    unknown: list[str] = field(default_factory=list)
    # Names of the flags the command line set (even to their default value).
    given: set[str] = field(default_factory=set)


_FIELDS = {f.name: f for f in dataclasses.fields(Flags) if f.name not in ("unknown", "given")}
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def _convert(name: str, kind: object, text: str) -> object:
    try:
        if kind in (int, "int"):
            return int(text, 10)
        if kind in (float, "float"):
            return float(text)
    except ValueError:
        raise FlagError(f"Couldn't interpret value {text} for flag {name}.") from None
    return text


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parse arguments (without the program name) into :class:`Flags`."""
    flags = Flags()
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            flags.unknown.append(arg)
            continue
        body = arg.lstrip("-")
        name, has_value, value = body.partition("=")
        spec = _FIELDS.get(name)
        if spec is None:
            flags.unknown.append(arg)
            continue
        if spec.type in (bool, "bool"):
            if not has_value:
                nxt = args[index].lower() if index < len(args) else ""
                if nxt in _TRUE | _FALSE:
                    value, index = nxt, index + 1
                else:
                    value = "true"
            lowered = value.lower()
            if lowered not in _TRUE | _FALSE:
                raise FlagError(f"Couldn't interpret value {value} for flag {name}.")
            setattr(flags, name, lowered in _TRUE)
            flags.given.add(name)
            continue
        if not has_value:
            if index >= len(args):
                raise FlagError(f"Flag --{name} needs a value.")
            value = args[index]
            index += 1
        setattr(flags, name, _convert(name, spec.type, value))
        flags.given.add(name)
    return flags


# Flags this server accepts but does not implement, whose setting would change what clients
# see: starting anyway would silently serve something else, so startup refuses them.
# name -> (the value that is refused, why and what to do instead).
_REFUSED: dict[str, tuple[object, str]] = {
    "ssl_config_file": (
        "non-empty",
        "TLS is not implemented: gRPC and REST serve plain text. Remove the flag and terminate "
        "TLS in front of the server (a proxy or the orchestrator's ingress)",
    ),
    "use_alts_credentials": (True, "ALTS credentials are not implemented. Remove the flag"),
    "rest_api_enable_cors_support": (
        True,
        "CORS headers are not implemented. Remove the flag and add CORS at a proxy",
    ),
    "enable_per_model_batching_parameters": (
        True,
        "per-model batching parameters are not implemented. Remove the flag; "
        "--batching_parameters_file applies to every model",
    ),
    "prefer_tflite_model": (
        True,
        "TensorFlow Lite models are not implemented. Remove the flag; the SavedModel is served",
    ),
    "platform_config_file": (
        "non-empty",
        "platform configs are not implemented. Remove the flag; use --model_config_file and "
        "the session flags",
    ),
    "tensorflow_session_config_file": (
        "non-empty",
        "session config files are not implemented. Remove the flag; use "
        "--tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism",
    ),
    "thread_pool_factory_config_file": (
        "non-empty",
        "thread pool factory configs are not implemented. Remove the flag",
    ),
    "mixed_precision": (
        "non-empty",
        "mixed precision is not implemented (results would differ). Remove the flag",
    ),
    "enable_signature_method_name_check": (
        True,
        "the signature method name check is not implemented. Remove the flag",
    ),
    "enable_grpc_healthcheck_service": (
        True,
        "the gRPC health service is not implemented. Remove the flag; probe readiness with "
        "GET /v1/models/<name> or a Predict on a missing model (NOT_FOUND names 'Servable')",
    ),
}

# Flags accepted and ignored because they change nothing observable here (tuning, GPU/TPU-only
# or internal memory options). Setting one logs a warning naming it.
IGNORED_FLAGS = (
    "num_unload_threads",
    "flush_filesystem_caches",
    "per_process_gpu_memory_fraction",
    "remove_unused_fields_from_bundle_metagraph",
    "num_tflite_pools",
    "num_tflite_interpreters_per_pool",
    "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled",
    "skip_initialize_tpu",
    "enable_profiler",
)


def refused_flags(flags: Flags) -> list[str]:
    """One message per flag set to a value this server cannot honour (empty when all is well)."""
    messages = []
    for name, (refused, why) in _REFUSED.items():
        value = getattr(flags, name)
        hit = bool(value) if refused == "non-empty" else value == refused
        if hit:
            messages.append(f"--{name}={_text(value)} is not supported by this server: {why}.")
    return messages


def ignored_flags(flags: Flags) -> list[str]:
    """Flags given on the command line that this server accepts and ignores."""
    return [name for name in IGNORED_FLAGS if name in flags.given]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def image_argv(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The official image's entrypoint: ``--model_name=$MODEL_NAME
    --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME`` before the given arguments, when the
    environment sets them (only inside the image, where ``MODEL_BASE_PATH`` is defined)."""
    if "MODEL_BASE_PATH" not in environ and "MODEL_NAME" not in environ:
        return list(argv)
    name = environ.get("MODEL_NAME", "model")
    base = environ.get("MODEL_BASE_PATH", "/models")
    return [f"--model_name={name}", f"--model_base_path={base}/{name}", *argv]


def usage() -> str:
    lines = ["usage: tensorflow_model_server", "Flags:"]
    for name, spec in _FIELDS.items():
        default = spec.default
        if isinstance(default, bool):
            default_text = "true" if default else "false"
        else:
            default_text = str(default)
        lines.append(f"\t--{name}={default_text}\t{spec.type}")
    return "\n".join(lines)


def warn_unknown(flags: Flags) -> None:
    for arg in flags.unknown:
        print(f"unknown argument: {arg}", file=sys.stderr, flush=True)


def environ() -> Mapping[str, str]:
    return os.environ
