"""The spec's JSON Schema, for editors' completion of ``stack.yaml``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tfstack.errors import WriteError
from tfstack.spec.model import (
    StackSpecFields,
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema editors use for completion of ``stack.yaml``."""
    schema = StackSpecFields.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tfstack stack spec"
    return schema


def json_schema_text() -> str:
    """The schema as committed in ``config/stack.schema.json`` (stable key order, final newline)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path) -> bool:
    """Write the spec's JSON Schema to ``path`` atomically; False when it was already current."""
    text = json_schema_text()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write the schema: {exc.strerror or exc}", path=str(path)) from exc
    return True
