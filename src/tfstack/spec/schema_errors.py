"""Phase 2 of loading a spec: pydantic's errors translated into what was expected.

"Did you mean" hints for unknown keys and one clear message for a bad version policy.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tfstack.errors import SpecProblem
from tfstack.spec.model import (
    LABEL_PATTERN,
    MEMORY_PATTERN,
    METRICS_PATH_PATTERN,
    NAME_PATTERN,
    PROJECT_PATTERN,
    AllPolicy,
    LatestPolicy,
    SpecificPolicy,
    StackSpecFields,
)
from tfstack.spec.yamlread import Lines, Loc, count_noun, format_yaml_path

_PATTERN_TEXT: Mapping[str, str] = {
    NAME_PATTERN: "a name of letters, digits, '_', '.' and '-' that starts with a letter or digit "
    "(at most 128 characters)",
    LABEL_PATTERN: "a label of letters, digits, '_' and '-' that starts with a letter or '_' "
    "(at most 64 characters)",
    PROJECT_PATTERN: "a Compose project name: lowercase letters, digits, '_' and '-', starting "
    "with a letter or digit (at most 63 characters)",
    MEMORY_PATTERN: "a size such as 512m or 2g (k, m, g suffixes)",
    METRICS_PATH_PATTERN: "an absolute URL path of letters, digits, '/', '_', '.' and '-' such as "
    "/monitoring/prometheus/metrics",
}

_POLICY_BRANCHES: Mapping[str, str] = {
    "latest": LatestPolicy.__name__,
    "all": AllPolicy.__name__,
    "specific": SpecificPolicy.__name__,
}
_POLICY_HELP = "`latest: N`, `all: true` or `specific: [1, 2]`"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional layers from a field annotation."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _type_at(loc: Sequence[str | int]) -> Any:
    """The spec type found at a data path (a BaseModel class, list[...], dict[...] or a leaf)."""
    current: Any = StackSpecFields
    for part in loc:
        current = _unwrap(current)
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        elif origin in (list, dict):
            current = get_args(current)[-1]
        else:
            return None
    return _unwrap(current)


def _valid_keys(loc: Sequence[str | int]) -> list[str]:
    target = _type_at(loc)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return []


def _did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    if not choices:
        return None
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(choices)


def _data_at(data: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        if isinstance(data, dict) and isinstance(part, str):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _describe(error: Mapping[str, Any], loc: Loc) -> tuple[str, str | None]:
    """What was expected, in words, and an optional hint."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = f"got {_show(value)}"
    if kind == "missing":
        return f"required field '{loc[-1]}' is missing", None
    if kind == "extra_forbidden":
        return f"unknown key '{loc[-1]}'", _did_you_mean(str(loc[-1]), _valid_keys(loc[:-1]))
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, {got}", None
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, {got}", None
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, {got}", None
    if kind in ("string_type",):
        return f"expected a string, {got}", "quote the value" if value is not None else None
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, {got}", None
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, {got}", None
    if kind == "literal_error":
        expected = str(ctx.get("expected", "one of the allowed values"))
        expected = re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", expected))
        return f"expected {expected}, {got}", None
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return f"expected {_PATTERN_TEXT.get(pattern, f'text matching {pattern}')}, {got}", None
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx.get(key)}, {got}", None
    if kind == "too_short":
        return f"must have at least {count_noun(int(ctx.get('min_length', 1)), 'item')}", None
    if kind == "too_long":
        return f"must have at most {count_noun(int(ctx.get('max_length', 0)), 'item')}", None
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, "), None
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, {got}", None


def _policy_problems(
    loc: Loc, errors: list[Mapping[str, Any]], data: Any, lines: Lines, file: str
) -> list[SpecProblem]:
    """One clear message for a bad version policy instead of three union branches' errors."""
    raw = _data_at(data, loc)
    path, line = format_yaml_path(loc), lines.at(loc)
    if not isinstance(raw, dict):
        hint = None
        if isinstance(raw, str) and raw in _POLICY_BRANCHES:
            example = {"latest": "{latest: 1}", "all": "{all: true}", "specific": "{specific: [1]}"}
            hint = f"write `policy: {example[raw]}`"
        return [
            SpecProblem(
                file,
                path,
                f"expected a version policy mapping: {_POLICY_HELP}; got {_show(raw)}",
                line,
                hint,
            )
        ]
    chosen = [key for key in raw if key in _POLICY_BRANCHES]
    if len(chosen) > 1:
        return [
            SpecProblem(
                file,
                path,
                "a version policy takes exactly one of latest, all and "
                f"specific; got {' and '.join(chosen)}",
                line,
                f"keep one: {_POLICY_HELP}",
            )
        ]
    if not chosen:
        unknown = ", ".join(f"'{key}'" for key in raw)
        close = None
        for key in raw:
            match = difflib.get_close_matches(str(key), list(_POLICY_BRANCHES), n=1, cutoff=0.5)
            if match:
                close = f"did you mean '{match[0]}'?"
                break
        return [
            SpecProblem(
                file,
                path,
                f"unknown version policy {unknown}; expected {_POLICY_HELP}",
                line,
                close,
            )
        ]
    branch = _POLICY_BRANCHES[chosen[0]]
    problems = []
    for error in errors:
        eloc = tuple(error["loc"])
        if len(eloc) > len(loc) and eloc[len(loc)] == branch:
            inner: Loc = (*loc, *eloc[len(loc) + 1 :])
            message, hint = _describe(error, inner)
            if error["type"] == "extra_forbidden":
                hint = f"a policy is exactly one of {_POLICY_HELP}"
            problems.append(
                SpecProblem(file, format_yaml_path(inner), message, lines.at(inner), hint)
            )
    return problems


def schema_problems(exc: ValidationError, data: Any, lines: Lines, file: str) -> list[SpecProblem]:
    """pydantic's errors as SpecProblems with YAML path, line, expectation and hints."""
    problems: list[SpecProblem] = []
    policies: dict[Loc, list[Mapping[str, Any]]] = {}
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        branch_at = next(
            (
                i
                for i, part in enumerate(loc)
                if part in _POLICY_BRANCHES.values() and i > 0 and loc[i - 1] == "policy"
            ),
            None,
        )
        if branch_at is not None:
            policies.setdefault(loc[:branch_at], []).append(error)
            continue
        if loc and loc[-1] == "[key]":
            key_loc = loc[:-1]
            message, hint = _describe(error, key_loc)
            name = "label name" if len(key_loc) >= 2 and key_loc[-2] == "labels" else "key"
            problems.append(
                SpecProblem(
                    file,
                    format_yaml_path(key_loc),
                    f"invalid {name}: {message}",
                    lines.at(key_loc),
                    hint,
                )
            )
            continue
        message, hint = _describe(error, loc)
        line = lines.at(loc) if error["type"] != "missing" else lines.at(loc[:-1])
        problems.append(SpecProblem(file, format_yaml_path(loc), message, line, hint))
    for loc, errors in policies.items():
        problems.extend(_policy_problems(loc, errors, data, lines, file))
    problems.sort(key=lambda p: (p.line if p.line is not None else 0, p.yaml_path))
    return problems
