"""Protobuf text format: string quoting, and the TF Serving messages rendered files must parse as.

``ModelServerConfig`` comes from ``tensorflow-serving-api``. That wheel ships neither
``monitoring_config.proto`` nor ``session_bundle_config.proto`` (``BatchingParameters``), so when
the upstream Python modules cannot be imported, tfstack describes those two messages itself: the
field names, numbers and types below are facts from upstream's ``.proto`` files
(``tensorflow_serving/config/monitoring_config.proto`` and
``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``), restricted to the fields
tfstack writes. Imports are lazy: nothing here loads until a file is checked.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from google.protobuf.message import Message

_PRINTABLE_ASCII = range(0x20, 0x7F)
_SIMPLE_ESCAPES = {
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("'"): "\\'",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def quote(value: object) -> str:
    """A protobuf text-format string literal for ``value`` (UTF-8; non-ASCII as octal escapes).

    Output is pure printable ASCII, so a hostile value (quotes, backslashes, newlines, NULs,
    Unicode line separators) can neither end the literal early nor start a new field.
    """
    out = ['"']
    for byte in str(value).encode("utf-8", errors="surrogatepass"):
        if byte in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[byte])
        elif byte in _PRINTABLE_ASCII:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


_FALLBACK_PACKAGE = "tfstack.fallback.tensorflow.serving"
_FDP = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str, number: int, kind: int, *, type_name: str = "", repeated: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "number": number,
        "type": kind,
        "type_name": type_name,
        "label": _FDP.LABEL_REPEATED if repeated else _FDP.LABEL_OPTIONAL,
    }


def _fallback_file() -> descriptor_pb2.FileDescriptorProto:
    """Upstream's BatchingParameters and MonitoringConfig, as far as tfstack writes them."""
    wrapper = ".google.protobuf.Int64Value"
    messages: dict[str, list[dict[str, Any]]] = {
        "BatchingParameters": [
            _field("max_batch_size", 1, _FDP.TYPE_MESSAGE, type_name=wrapper),
            _field("batch_timeout_micros", 2, _FDP.TYPE_MESSAGE, type_name=wrapper),
            _field("max_enqueued_batches", 3, _FDP.TYPE_MESSAGE, type_name=wrapper),
            _field("num_batch_threads", 4, _FDP.TYPE_MESSAGE, type_name=wrapper),
            _field(
                "thread_pool_name",
                5,
                _FDP.TYPE_MESSAGE,
                type_name=".google.protobuf.StringValue",
            ),
            _field("allowed_batch_sizes", 6, _FDP.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _FDP.TYPE_BOOL),
        ],
        "PrometheusConfig": [
            _field("enable", 1, _FDP.TYPE_BOOL),
            _field("path", 2, _FDP.TYPE_STRING),
        ],
        "MonitoringConfig": [
            _field(
                "prometheus_config",
                1,
                _FDP.TYPE_MESSAGE,
                type_name=f".{_FALLBACK_PACKAGE}.PrometheusConfig",
            ),
        ],
    }
    proto = descriptor_pb2.FileDescriptorProto(
        name="tfstack/fallback_tensorflow_serving.proto",
        package=_FALLBACK_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in messages.items():
        message = proto.message_type.add(name=message_name)
        for spec in fields:
            field = message.field.add(
                name=spec["name"], number=spec["number"], type=spec["type"], label=spec["label"]
            )
            if spec["type_name"]:
                field.type_name = spec["type_name"]
    return proto


@functools.cache
def _fallback_classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(_fallback_file())
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_FALLBACK_PACKAGE}.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def _upstream(module: str, name: str) -> type[Message] | None:
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return None
    cls = getattr(loaded, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, Message) else None


@functools.cache
def model_server_config() -> type[Message]:
    """TF Serving's ``ModelServerConfig`` (from tensorflow-serving-api, a hard dependency)."""
    cls = _upstream("tensorflow_serving.config.model_server_config_pb2", "ModelServerConfig")
    if cls is None:
        raise ImportError(
            "tensorflow_serving.config.model_server_config_pb2 is missing: install "
            "tensorflow-serving-api (./tfstack installs it)"
        )
    return cls


@functools.cache
def batching_parameters() -> type[Message]:
    """``BatchingParameters``: upstream's module when importable, else tfstack's description."""
    cls = _upstream(
        "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2", "BatchingParameters"
    )
    return cls if cls is not None else _fallback_classes()["BatchingParameters"]


@functools.cache
def monitoring_config() -> type[Message]:
    """``MonitoringConfig``: upstream's module when importable, else tfstack's description."""
    cls = _upstream("tensorflow_serving.config.monitoring_config_pb2", "MonitoringConfig")
    return cls if cls is not None else _fallback_classes()["MonitoringConfig"]


def parse(text: str, message_type: type[Message]) -> Message:
    """Parse ``text`` as ``message_type``; raises ``text_format.ParseError`` (with a line)."""
    return text_format.Parse(text, message_type())
