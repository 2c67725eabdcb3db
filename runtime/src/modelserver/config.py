"""Server configuration files in protobuf text format, parsed with TF Serving's own protos.

``ModelServerConfig`` comes from ``tensorflow_serving.config``; ``MonitoringConfig`` is not shipped
in the pip package, so its two-message schema is declared here with the upstream field numbers and
parsed by the same text-format parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from modelserver.errors import Code, ServingError, invalid_argument

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


class ConfigParseError(ServingError):
    """A config file that does not parse; ``parser_message`` is protobuf's line:column text."""

    def __init__(self, path: str, type_name: str, parser_message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'")
        self.path = path
        self.parser_line = f"Error parsing text-format {type_name}: {parser_message}"


def parse_text(text: str, message: Any, path: str) -> Any:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigParseError(path, message.DESCRIPTOR.full_name, str(exc)) from exc
    return message


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingError(Code.NOT_FOUND, f"Could not read config file {path}: {exc}") from exc


def load_model_server_config(path: str) -> Any:
    return parse_text(read_text(path), model_server_config_pb2.ModelServerConfig(), path)


def single_model_config(name: str, base_path: str) -> Any:
    """The config upstream builds from ``--model_name`` / ``--model_base_path``."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def model_configs(config: Any) -> list[Any]:
    """The ModelConfig entries; only ``model_config_list`` is supported (as upstream's reload)."""
    kind = config.WhichOneof("config")
    if kind != "model_config_list":
        raise invalid_argument("ServerConfig is not of type model_config_list.")
    return list(config.model_config_list.config)


@dataclass(frozen=True)
class MonitoringConfig:
    enable: bool = False
    path: str = DEFAULT_METRICS_PATH


_MONITORING_CLASS: dict[str, Any] = {}


def _monitoring_message() -> Any:
    """``tensorflow.serving.MonitoringConfig`` built from its descriptor (upstream numbering)."""
    if not _MONITORING_CLASS:
        proto = descriptor_pb2.FileDescriptorProto(
            name="modelserver/monitoring_config.proto",
            package="tensorflow.serving",
            syntax="proto3",
        )
        prom = proto.message_type.add(name="PrometheusConfig")
        prom.field.add(name="enable", number=1, type=8, label=1)  # bool
        prom.field.add(name="path", number=2, type=9, label=1)  # string
        mon = proto.message_type.add(name="MonitoringConfig")
        mon.field.add(
            name="prometheus_config",
            number=1,
            type=11,
            label=1,
            type_name=".tensorflow.serving.PrometheusConfig",
        )
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        descriptor = pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
        _MONITORING_CLASS["class"] = message_factory.GetMessageClass(descriptor)
    return _MONITORING_CLASS["class"]()


def load_monitoring_config(path: str) -> MonitoringConfig:
    message = parse_text(read_text(path), _monitoring_message(), path)
    prometheus = message.prometheus_config
    return MonitoringConfig(enable=prometheus.enable, path=prometheus.path or DEFAULT_METRICS_PATH)
