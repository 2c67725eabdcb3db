"""The stack spec: its typed model, loading and validation, JSON Schema and round-trip edits.

``load_spec(path)`` (or ``StackSpec.from_yaml(path)``) is the one way tfstack reads
``config/stack.yaml``. Modules: ``model`` (the frozen pydantic objects and path helpers), ``load``
(the entry points), its three phases ``yamlread``, ``schema_errors`` and ``rules``, ``schema``
(the JSON Schema file) and ``edit`` (comment-keeping edits that rollouts make).
"""

from tfstack.spec.frontend import (
    FRONTEND_IMAGE,
    FrontendAuth,
    FrontendSpec,
    FrontendTLS,
    frontend_enabled,
    frontend_file,
)
from tfstack.spec.load import StackSpec, ValidationReport, check_spec, load_spec, validate_spec
from tfstack.spec.model import (
    CONTAINER_CONFIG_DIR,
    CONTAINER_MODEL_ROOT,
    LABEL_PATTERN,
    MEMORY_PATTERN,
    METRICS_PATH_PATTERN,
    NAME_PATTERN,
    PROJECT_PATTERN,
    SPEC_FORMAT,
    AllPolicy,
    BatchingSpec,
    LatestPolicy,
    ModelSpec,
    MonitoringSpec,
    Resources,
    SampleRequest,
    ServingSpec,
    SpecificPolicy,
    StackSpecFields,
    model_base_path,
    model_host_dir,
    model_relative_path,
    model_repository_dir,
    sample_body,
    spec_dir,
)
from tfstack.spec.rules import ModelInventory
from tfstack.spec.schema import json_schema, json_schema_text, write_json_schema
from tfstack.spec.slo import SloSpec
from tfstack.spec.yamlread import format_yaml_path, read_yaml

__all__ = [
    "CONTAINER_CONFIG_DIR",
    "CONTAINER_MODEL_ROOT",
    "FRONTEND_IMAGE",
    "LABEL_PATTERN",
    "MEMORY_PATTERN",
    "METRICS_PATH_PATTERN",
    "NAME_PATTERN",
    "PROJECT_PATTERN",
    "SPEC_FORMAT",
    "AllPolicy",
    "BatchingSpec",
    "FrontendAuth",
    "FrontendSpec",
    "FrontendTLS",
    "LatestPolicy",
    "ModelInventory",
    "ModelSpec",
    "MonitoringSpec",
    "Resources",
    "SampleRequest",
    "ServingSpec",
    "SloSpec",
    "SpecificPolicy",
    "StackSpec",
    "StackSpecFields",
    "ValidationReport",
    "check_spec",
    "format_yaml_path",
    "frontend_enabled",
    "frontend_file",
    "json_schema",
    "json_schema_text",
    "load_spec",
    "model_base_path",
    "model_host_dir",
    "model_relative_path",
    "model_repository_dir",
    "read_yaml",
    "sample_body",
    "spec_dir",
    "validate_spec",
    "write_json_schema",
]
