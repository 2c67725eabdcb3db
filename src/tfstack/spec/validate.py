"""Loading and validating a stack spec: YAML with line numbers, schema errors, semantic checks.

``load_spec(path)`` is the one way the rest of tfstack reads ``config/stack.yaml``: it returns a
frozen :class:`~tfstack.spec.StackSpec` or raises :class:`~tfstack.errors.SpecError` carrying every
problem found (file, line, YAML path such as ``models[2].labels.canary``, message, hint). Nothing
else ever escapes, and nothing is written.

Three phases, each reporting all of its problems:

1. **YAML**: size, encoding and syntax; one document whose top level is a mapping; no aliases (so no
   "billion laughs"), bounded nesting, no duplicate keys, only plain JSON-like scalar types. Mapping
   keys are always kept as strings (``1:`` is the key ``"1"``, ``on:`` is ``"on"``).
2. **Schema**: the typed model in :mod:`tfstack.spec` (pydantic), its errors translated into what
   was expected, with "did you mean" hints for unknown keys and one clear message for a bad version
   policy.
3. **Semantics**: what TF Serving or Docker would reject at start or reload (tfserving-contract
   sections 2-4), and what would make tfstack's own later steps fail. With ``check_disk`` the model
   repository is inspected too (file names only: nothing here imports TensorFlow). Semantic checks
   run once the schema is valid.

Version directory policy: TF Serving silently ignores children of a model directory whose names do
not parse as integers. tfstack treats such a directory (``v2``, ``1.5``, ``-3``) as an error because
it is nearly always a mistake that would leave a version unserved without a word. Names starting
with ``.`` are the exception: they are reserved for staging a version before it is renamed into
place, and are ignored like TF Serving does. Plain files are ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from tfstack.errors import SpecError, SpecProblem, WriteError
from tfstack.spec import (
    LABEL_PATTERN,
    MEMORY_PATTERN,
    METRICS_PATH_PATTERN,
    NAME_PATTERN,
    PROJECT_PATTERN,
    AllPolicy,
    LatestPolicy,
    ModelSpec,
    SampleRequest,
    SpecificPolicy,
    StackSpec,
    json_schema_text,
    model_base_path,
    model_relative_path,
    spec_dir,
)

MAX_SPEC_BYTES = 4 * 1024 * 1024
"""A spec larger than this is refused before parsing (200 models take about 100 KiB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and sequences accepted (sample bodies included)."""
MAX_BODY_FILE_BYTES = 64 * 1024 * 1024
"""Largest sample ``body_file`` read; a sample is a request body, not a data set."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""Docker refuses memory limits below 6 MiB."""
INT64_MAX = 2**63 - 1
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

Loc = tuple[str | int, ...]

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_VERSION_DIR = re.compile(r"^[0-9]+$")

# Flags tfstack derives from spec fields; an extra flag would silently override them (last wins).
MANAGED_FLAGS: Mapping[str, str] = {
    "port": "serving.grpc_port",
    "rest_api_port": "serving.rest_port",
    "rest_api_timeout_in_ms": "serving.rest_api_timeout_ms",
    "model_config_file": "models",
    "model_name": "models",
    "model_base_path": "models",
    "model_config_file_poll_wait_seconds": "serving.config_poll_seconds",
    "file_system_poll_wait_seconds": "serving.file_system_poll_seconds",
    "max_num_load_retries": "serving.max_load_retries",
    "load_retry_interval_micros": "serving.load_retry_interval_micros",
    "tensorflow_intra_op_parallelism": "serving.intra_op_threads",
    "tensorflow_inter_op_parallelism": "serving.inter_op_threads",
    "enable_model_warmup": "serving.enable_model_warmup",
    "enable_batching": "batching.enabled",
    "batching_parameters_file": "batching",
    "monitoring_config_file": "monitoring",
    "allow_version_labels_for_unavailable_models": "models[].labels (set automatically)",
}

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


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ModelInventory:
    """What the model repository holds for one model (empty when disk checks are off)."""

    name: str
    host_dir: Path
    on_disk: tuple[int, ...]  # numbered version directories found, ascending
    served: tuple[int, ...]  # the versions the policy keeps among those found, ascending
    labels: Mapping[str, int]


@dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`check_spec` found; ``spec`` is None when the schema phase failed."""

    path: Path
    problems: list[SpecProblem]
    spec: StackSpec | None = None
    inventory: tuple[ModelInventory, ...] = ()
    checked_disk: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems and self.spec is not None

    def raise_for_problems(self) -> StackSpec:
        """The spec, or SpecError with every problem."""
        if self.problems or self.spec is None:
            raise SpecError(self.problems)
        return self.spec

    def summary(self) -> str:
        """One line for `invoke validate`: models, versions found, labels."""
        spec = self.raise_for_problems()
        labels = sum(len(m.labels) for m in spec.models)
        text = f"{self.path}: OK, {_count(len(spec.models), 'model')}"
        if self.checked_disk:
            found = sum(len(i.on_disk) for i in self.inventory)
            served = sum(len(i.served) for i in self.inventory)
            text += f", {_count(found, 'version')} found ({served} served)"
        else:
            text += " (model directories not checked)"
        return text + f", {_count(labels, 'label')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# Public entry points


def load_spec(
    path: Path, *, check_disk: bool = True, project_root: Path | None = None
) -> StackSpec:
    """Read and validate a stack spec; raise SpecError listing every problem found.

    ``check_disk=False`` skips the checks of model directories and sample body files (for specs
    whose models are generated later). ``project_root`` bounds relative paths; by default it is the
    parent of the spec's directory (``<project>/config/stack.yaml``).
    """
    return check_spec(path, check_disk=check_disk, project_root=project_root).raise_for_problems()


def validate_spec(
    path: Path, *, check_disk: bool = True, project_root: Path | None = None
) -> list[SpecProblem]:
    """Every problem in the spec at ``path`` (empty when it is valid)."""
    return check_spec(path, check_disk=check_disk, project_root=project_root).problems


def check_spec(
    path: Path, *, check_disk: bool = True, project_root: Path | None = None
) -> ValidationReport:
    """Run all three phases; the report carries the spec, the problems and the disk inventory."""
    path = Path(path)
    file = str(path)
    data, lines, problems = read_yaml(path)
    if problems or data is None:
        return ValidationReport(path, problems, checked_disk=check_disk)
    try:
        spec = StackSpec.model_validate(data)
    except ValidationError as exc:
        return ValidationReport(
            path, schema_problems(exc, data, lines, file), checked_disk=check_disk
        )
    checker = _Checker(spec, path, file, lines, check_disk=check_disk, project_root=project_root)
    checker.run()
    return ValidationReport(
        path, checker.problems, spec, tuple(checker.inventory), checked_disk=check_disk
    )


def format_yaml_path(loc: Sequence[str | int]) -> str:
    """``("models", 2, "labels", "canary")`` → ``models[2].labels.canary``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


# --------------------------------------------------------------------------------------------
# Phase 1: YAML


class _Lines:
    """1-based line numbers of YAML nodes by path (mapping entries: the key's line)."""

    def __init__(self) -> None:
        self.by_path: dict[Loc, int] = {}

    def at(self, loc: Sequence[str | int]) -> int | None:
        key = tuple(loc)
        while key:
            if key in self.by_path:
                return self.by_path[key]
            key = key[:-1]
        return self.by_path.get(())


class _Abort(Exception):
    """Stop parsing: the document cannot be read any further."""


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    loc: Loc
    line: int
    key: str | None = None  # mappings: the key waiting for its value
    key_line: int = 0
    skip: bool = False  # mappings: the pending key is a duplicate; drop its value
    seen: dict[str, int] = field(default_factory=dict)


class _YamlReader:
    """Builds plain Python data from YAML events, recording lines and refusing what is unsafe."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines = _Lines()
        self.problems: list[SpecProblem] = []
        self._resolver = Resolver()
        self._constructor = SafeConstructor()

    def problem(self, loc: Loc, line: int | None, message: str, hint: str | None = None) -> None:
        self.problems.append(SpecProblem(self.file, format_yaml_path(loc), message, line, hint))

    def read(self, text: str) -> Any:
        stack: list[_Frame] = []
        documents = 0
        root: Any = None
        for event in yaml.parse(text, Loader=_LOADER):
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    self.problem(
                        (),
                        line,
                        "the spec holds more than one YAML document",
                        "keep a single document: remove the `---` separator",
                    )
                    raise _Abort
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                done = stack.pop()
                value: Any = done.container
                if stack:
                    self._attach(stack[-1], value, done.line, is_scalar=False, raw=None)
                else:
                    root = value
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            parent = stack[-1] if stack else None
            loc = self._child_loc(parent) if parent else ()
            if isinstance(event, yaml.AliasEvent):
                self.problem(
                    loc,
                    line,
                    f"YAML aliases are not allowed (found *{event.anchor})",
                    "write the value out in full; anchors and aliases (&name, *name, "
                    "<<: *name) are refused so that a small file cannot expand into a "
                    "huge one",
                )
                if parent is not None:
                    self._attach(parent, None, line or 0, is_scalar=False, raw=None)
                continue
            if isinstance(event, yaml.ScalarEvent):
                value = self._scalar(event, loc, line)
                if parent is None:
                    root = value
                else:
                    self._attach(parent, value, line or 0, is_scalar=True, raw=event.value)
                continue
            # A mapping or sequence starts.
            if parent is not None and isinstance(parent.container, dict) and parent.key is None:
                self.problem(
                    parent.loc, line, "a mapping key must be a plain value, not a mapping or list"
                )
                raise _Abort
            if len(stack) >= MAX_DEPTH:
                self.problem(
                    loc,
                    line,
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "a stack spec never needs this; flatten the structure",
                )
                raise _Abort
            if not isinstance(event, yaml.CollectionStartEvent):
                continue
            tag = event.tag
            is_map = isinstance(event, yaml.MappingStartEvent)
            if tag not in (None, "!", _TAG + ("map" if is_map else "seq")):
                self.problem(
                    loc,
                    line,
                    f"unsupported YAML tag {tag}",
                    "use plain mappings, lists and scalars",
                )
            stack.append(_Frame({} if is_map else [], loc, line or 0))
        return root

    @staticmethod
    def _child_loc(parent: _Frame) -> Loc:
        if isinstance(parent.container, list):
            return (*parent.loc, len(parent.container))
        return (*parent.loc, parent.key) if parent.key is not None else parent.loc

    def _attach(
        self, parent: _Frame, value: Any, line: int, *, is_scalar: bool, raw: str | None
    ) -> None:
        if isinstance(parent.container, list):
            self.lines.by_path[(*parent.loc, len(parent.container))] = line
            parent.container.append(value)
            return
        if parent.key is None:
            # This scalar is a key: keys stay strings, whatever they look like.
            key = raw if raw is not None else str(value)
            if key in parent.seen:
                self.problem(
                    (*parent.loc, key),
                    line,
                    f"duplicate key '{key}' (first at line {parent.seen[key]}, again at "
                    f"line {line})",
                    "keep one of them; YAML would silently use the last",
                )
                parent.skip = True
            else:
                parent.seen[key] = line
                parent.skip = False
            parent.key, parent.key_line = key, line
            return
        if not parent.skip:
            self.lines.by_path[(*parent.loc, parent.key)] = parent.key_line
            parent.container[parent.key] = value
        parent.key, parent.skip = None, False

    def _scalar(self, event: yaml.ScalarEvent, loc: Loc, line: int | None) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolver.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, event.value, event.implicit
            )
        node = yaml.ScalarNode(tag, event.value)
        c = self._constructor
        if tag == _TAG + "str":
            return event.value
        if tag == _TAG + "timestamp":
            return event.value  # dates stay text: the spec is JSON-like
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return c.construct_yaml_bool(node)
        if tag == _TAG + "int":
            return c.construct_yaml_int(node)
        if tag == _TAG + "float":
            return c.construct_yaml_float(node)
        if tag in (_TAG + "merge", _TAG + "value"):
            return event.value
        self.problem(
            loc,
            line,
            f"unsupported YAML tag {tag}",
            "use plain strings, numbers, booleans and null",
        )
        return None


def read_yaml(path: Path) -> tuple[Any, _Lines, list[SpecProblem]]:
    """The spec's data (a mapping), its line map and the YAML-level problems."""
    file = str(path)
    reader = _YamlReader(file)

    def fail(
        message: str, line: int | None = None, hint: str | None = None
    ) -> tuple[Any, _Lines, list[SpecProblem]]:
        return None, reader.lines, [SpecProblem(file, "", message, line, hint)]

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        return fail("spec file not found", hint="check the path given with --spec")
    except IsADirectoryError:
        return fail("is a directory, not a spec file", hint="point --spec at a .yaml file")
    except OSError as exc:
        return fail(f"cannot read the spec: {exc.strerror or exc}")
    except ValueError as exc:  # e.g. a NUL character in the path
        return fail(f"cannot read the spec: {exc}")
    if len(raw) > MAX_SPEC_BYTES:
        return fail(
            f"spec is larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB",
            hint="a stack spec is a few KiB per model; is this the right file?",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return fail(
            f"not UTF-8 text (invalid byte at offset {exc.start})", hint="save the spec as UTF-8"
        )
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        return fail("the spec is empty", hint="start from config/stack.yaml in the tfstack repo")
    try:
        data = reader.read(text)
    except _Abort:
        return None, reader.lines, reader.problems
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        message = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        return fail(message, line, "check indentation, quotes and colons around that line")
    if reader.problems:
        return None, reader.lines, reader.problems
    if not isinstance(data, dict):
        kind = "empty" if data is None else _a(_kind(data))
        return fail(
            f"the top level must be a mapping of spec fields, but it is {kind}",
            reader.lines.at(()),
            "start with `project: ...` and `models: ...`",
        )
    return data, reader.lines, []


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "null" if value is None else type(value).__name__


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


# --------------------------------------------------------------------------------------------
# Phase 2: schema errors


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
    current: Any = StackSpec
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
        return f"must have at least {_count(int(ctx.get('min_length', 1)), 'item')}", None
    if kind == "too_long":
        return f"must have at most {_count(int(ctx.get('max_length', 0)), 'item')}", None
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, "), None
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, {got}", None


def _policy_problems(
    loc: Loc, errors: list[Mapping[str, Any]], data: Any, lines: _Lines, file: str
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


def schema_problems(exc: ValidationError, data: Any, lines: _Lines, file: str) -> list[SpecProblem]:
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


# --------------------------------------------------------------------------------------------
# Phase 3: semantics


def _escapes(base: Path, relative: str) -> bool:
    """Whether ``relative`` joined to ``base`` leaves ``base`` (lexically, before symlinks)."""
    root = os.path.normpath(base)
    target = os.path.normpath(os.path.join(root, relative))
    return not (target == root or target.startswith(root.rstrip(os.sep) + os.sep))


def _parse_bytes(size: str) -> float:
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([kmgKMG]?)[bB]?$", size)
    if match is None:  # the schema already guarantees the format
        return 0.0
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return float(match.group(1)) * scale


_IMAGE_REFERENCE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"  # optional registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # first path component
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # more components
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@sha256:[a-f0-9]{64})?$"  # digest
)


@dataclass
class _DiskVersions:
    exists: bool
    versions: dict[int, str] = field(default_factory=dict)  # version → directory name


class _Checker:
    """The semantic rules; each appends problems and never stops at the first."""

    def __init__(
        self,
        spec: StackSpec,
        path: Path,
        file: str,
        lines: _Lines,
        *,
        check_disk: bool,
        project_root: Path | None,
    ) -> None:
        self.spec = spec
        self.path = path
        self.file = file
        self.lines = lines
        self.check_disk = check_disk
        self.spec_dir = spec_dir(path)
        self.project_root = (
            Path(os.path.abspath(project_root)) if project_root else self.spec_dir.parent
        )
        self.problems: list[SpecProblem] = []
        self.inventory: list[ModelInventory] = []
        # Resolved once (spec.model_host_dir resolves per call, too slow for 200 models).
        repo = spec.model_repository
        joined = repo if os.path.isabs(repo) else os.path.join(self.spec_dir, repo)
        try:
            self.repository_dir = Path(joined if os.path.isabs(repo) else os.path.realpath(joined))
        except (OSError, ValueError):  # symlink loops, NUL characters: reported below
            self.repository_dir = Path(os.path.normpath(joined))

    def host_dir(self, model: ModelSpec) -> Path:
        """The model's directory on the host, as :func:`tfstack.spec.model_host_dir` gives it."""
        relative = Path(model_relative_path(model))
        if relative.is_absolute():
            return relative
        return Path(os.path.normpath(self.repository_dir / relative))

    def add(
        self,
        loc: Loc,
        message: str,
        hint: str | None = None,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.problems.append(
            SpecProblem(
                file or self.file,
                format_yaml_path(loc),
                message,
                line if line is not None else self.lines.at(loc),
                hint,
            )
        )

    def run(self) -> None:
        repository_ok = self.check_repository()
        self.check_models(repository_ok)
        self.check_serving()
        self.check_batching()
        self.check_monitoring()

    # -- paths ------------------------------------------------------------------------------

    def check_repository(self) -> bool:
        repo = self.spec.model_repository
        if _nul_in_path(self, ("model_repository",), repo):
            return False
        if not repo.strip():
            self.add(
                ("model_repository",),
                "must not be empty",
                "give the directory holding one folder per model, e.g. ../models",
            )
            return False
        if not os.path.isabs(repo) and _escapes(
            self.project_root, os.path.join(self.spec_dir, repo)
        ):
            self.add(
                ("model_repository",),
                f"'{repo}' leaves the project directory {self.project_root}",
                "keep relative paths inside the project, or give an absolute path",
            )
            return False
        if self.check_disk:
            host = self.repository_dir
            if not os.path.isdir(host):
                what = "is not a directory" if os.path.exists(host) else "does not exist"
                self.add(
                    ("model_repository",),
                    f"model repository {host} {what}",
                    "create it (the demo's is made by `invoke models`) or fix the path",
                )
                return False
        return True

    # -- models -----------------------------------------------------------------------------

    def check_models(self, repository_ok: bool) -> None:
        first_index: dict[str, int] = {}
        mounts: dict[str, tuple[int, Path]] = {}
        for index, model in enumerate(self.spec.models):
            loc: Loc = ("models", index)
            if model.name in first_index:
                self.add(
                    (*loc, "name"),
                    f"model name '{model.name}' is already used by "
                    f"models[{first_index[model.name]}]",
                    "TF Serving needs unique names; rename one of them",
                )
            else:
                first_index[model.name] = index
            path_ok = self.check_model_path(model, loc)
            if path_ok:
                host = self.host_dir(model)
                base = model_base_path(model)
                if base in mounts and mounts[base][1] != host:
                    self.add(
                        (*loc, "path"),
                        f"this model's directory would appear in the server "
                        f"at {base}, like a different directory of "
                        f"models[{mounts[base][0]}]",
                        "an absolute model path is mounted at /models/<name>; rename the "
                        "model or move the directory into the repository",
                    )
                mounts.setdefault(base, (index, host))
            self.check_policy_and_labels(model, loc, path_ok and repository_ok)
            self.check_samples(model, loc)

    def check_model_path(self, model: ModelSpec, loc: Loc) -> bool:
        if model.path is None or (Path(model.path).is_absolute() and "\0" not in model.path):
            return True
        relative = model.path
        if _nul_in_path(self, (*loc, "path"), relative):
            return False
        normal = os.path.normpath(relative) if relative.strip() else "."
        if normal == "." or _escapes(Path("/repository"), relative):
            self.add(
                (*loc, "path"),
                f"'{relative}' is not a directory inside the model repository",
                "give a folder below model_repository (default: the model "
                "name) or an absolute path",
            )
            return False
        return True

    def scan(self, host_dir: Path, model_loc: Loc, model: ModelSpec) -> _DiskVersions:
        """Numbered version directories; problems for everything TF Serving would mishandle."""
        loc = model_loc if model.path is not None else model_loc[:-1]
        try:
            entries = list(os.scandir(host_dir))
        except FileNotFoundError:
            self.add(
                loc,
                f"model directory {host_dir} does not exist",
                "create it with numbered version directories (1/, 2/, ...) holding a "
                "SavedModel (the demo's come from `invoke models`), or fix `path` or "
                "`model_repository`",
            )
            return _DiskVersions(False)
        except NotADirectoryError:
            self.add(loc, f"{host_dir} is a file, not a model directory")
            return _DiskVersions(False)
        except (OSError, ValueError) as exc:
            self.add(loc, f"cannot list {host_dir}: {getattr(exc, 'strerror', None) or exc}")
            return _DiskVersions(False)
        found = _DiskVersions(True)
        problems_before = len(self.problems)
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name in SAVED_MODEL_FILES:
                self.add(
                    loc,
                    f"{host_dir} holds a SavedModel directly; TF Serving "
                    "only loads SavedModels inside numbered version directories",
                    f"move its contents into {host_dir / '1'}",
                )
                continue
            if name.startswith(".") or not entry.is_dir():
                continue
            if not _VERSION_DIR.match(name) or int(name) > INT64_MAX:
                self.add(
                    loc,
                    f"version directory '{name}' in {host_dir} is not a "
                    "whole number; TF Serving would silently ignore it",
                    "rename it to a number such as 1, or to a name starting with '.' "
                    "while it is being staged",
                )
                continue
            version = int(name)
            if version in found.versions:
                self.add(
                    loc,
                    f"directories '{found.versions[version]}' and '{name}' "
                    f"in {host_dir} are both version {version}",
                    "remove one of them",
                )
                continue
            found.versions[version] = name
            if not any(os.path.isfile(os.path.join(entry.path, f)) for f in SAVED_MODEL_FILES):
                self.add(
                    loc,
                    f"version {version} ({entry.path}) has no "
                    "saved_model.pb; TF Serving would fail to load it",
                    "export a SavedModel there, or remove the directory",
                )
        if not found.versions and len(self.problems) == problems_before:
            self.add(
                loc,
                f"model directory {host_dir} has no numbered version "
                "directory; TF Serving would wait for one forever with its ports closed",
                f"add {host_dir / '1'} holding a SavedModel",
            )
        return found

    def check_policy_and_labels(self, model: ModelSpec, loc: Loc, scan_disk: bool) -> None:
        policy = model.policy
        if isinstance(policy, SpecificPolicy):
            seen: set[int] = set()
            for i, version in enumerate(policy.specific):
                if version in seen:
                    self.add(
                        (*loc, "policy", "specific", i),
                        f"version {version} is listed twice",
                        "list each version once",
                    )
                seen.add(version)
        disk = (
            self.scan(self.host_dir(model), (*loc, "path"), model)
            if (self.check_disk and scan_disk)
            else None
        )
        on_disk = sorted(disk.versions) if disk is not None else []
        served: list[int] | None
        if isinstance(policy, SpecificPolicy):
            served = sorted(set(policy.specific))
        elif disk is None:
            served = None  # unknown without looking at the disk
        elif isinstance(policy, AllPolicy):
            served = on_disk
        else:
            served = on_disk[-policy.latest :]
        if disk is not None and disk.exists and isinstance(policy, SpecificPolicy):
            for i, version in enumerate(policy.specific):
                if version not in disk.versions:
                    self.add(
                        (*loc, "policy", "specific", i),
                        f"version {version} of model '{model.name}' is not on disk "
                        f"(found: {_versions(on_disk)})",
                        "add the version directory or remove it from the list",
                    )
            served = [v for v in served or [] if v in disk.versions]
        for label, version in model.labels.items():
            label_loc = (*loc, "labels", label)
            if disk is not None and disk.exists and version not in disk.versions:
                self.add(
                    label_loc,
                    f"label '{label}' points at version {version} of model "
                    f"'{model.name}', which is not on disk (found: {_versions(on_disk)})",
                    "point the label at an existing version",
                )
            elif served is not None and version not in served and (disk is None or disk.exists):
                self.add(
                    label_loc,
                    f"label '{label}' points at version {version}, which the "
                    f"policy {_policy_text(model)} does not serve "
                    f"(served: {_versions(served)})",
                    "add the version to the policy (e.g. `specific: [...]`) or move the label",
                )
        if disk is not None:
            self.inventory.append(
                ModelInventory(
                    model.name,
                    self.host_dir(model),
                    tuple(on_disk),
                    tuple(served or ()),
                    dict(model.labels),
                )
            )

    # -- samples ----------------------------------------------------------------------------

    def check_samples(self, model: ModelSpec, loc: Loc) -> None:
        names: dict[str, int] = {}
        for index, sample in enumerate(model.samples):
            sloc: Loc = (*loc, "samples", index)
            if sample.name in names:
                self.add(
                    (*sloc, "name"),
                    f"sample name '{sample.name}' is already used by "
                    f"samples[{names[sample.name]}] of model '{model.name}'",
                    "give each sample of a model its own name",
                )
            names.setdefault(sample.name, index)
            if sample.body is not None:
                self.check_body(sample, sample.body, (*sloc, "body"))
            elif sample.body_file is not None:
                self.check_body_file(sample, sloc)

    def check_body_file(self, sample: SampleRequest, loc: Loc) -> None:
        assert sample.body_file is not None
        floc = (*loc, "body_file")
        name = sample.body_file
        if _nul_in_path(self, floc, name):
            return
        if not name.strip():
            self.add(floc, "must not be empty", "name a JSON file relative to the spec")
            return
        if not os.path.isabs(name) and _escapes(
            self.project_root, os.path.join(self.spec_dir, name)
        ):
            self.add(
                floc,
                f"'{name}' leaves the project directory {self.project_root}",
                "keep sample files inside the project (e.g. config/samples/)",
            )
            return
        if not self.check_disk:
            return
        target = self.spec_dir / name
        try:
            size = target.stat().st_size
            if not target.is_file():
                self.add(floc, f"{target} is not a file")
                return
            if size > MAX_BODY_FILE_BYTES:
                self.add(
                    floc,
                    f"{target} is larger than {MAX_BODY_FILE_BYTES // (1024 * 1024)} MiB",
                    "a sample is one request; use a smaller one",
                )
                return
            raw = target.read_bytes()
        except FileNotFoundError:
            self.add(
                floc,
                f"sample file {target} does not exist",
                "paths are relative to the spec's directory",
            )
            return
        except (OSError, ValueError) as exc:
            self.add(floc, f"cannot read {target}: {getattr(exc, 'strerror', None) or exc}")
            return
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            line = getattr(exc, "lineno", None)
            detail = getattr(exc, "msg", None) or str(exc)
            self.add(
                floc,
                f"{target} is not valid JSON: {detail}" + (f" (line {line})" if line else ""),
                "a sample file holds one JSON request",
            )
            return
        except RecursionError:
            self.add(floc, f"{target} is nested too deeply to be a request body")
            return
        if not isinstance(body, dict):
            self.add(floc, f"{target} must hold a JSON object, not {_a(_kind(body))}")
            return
        self.check_body(sample, body, floc)

    def check_body(self, sample: SampleRequest, body: Mapping[str, Any], loc: Loc) -> None:
        if sample.method == "predict":
            present = [key for key in ("instances", "inputs") if key in body]
            if len(present) != 1:
                got = " and ".join(present) if present else "neither"
                self.add(
                    loc,
                    f"a predict request needs exactly one of 'instances' (row format) "
                    f"or 'inputs' (columnar); got {got}",
                    'e.g. {"instances": [1.0, 2.0]}',
                )
        else:
            examples = body.get("examples")
            if not isinstance(examples, list) or not examples:
                self.add(
                    loc,
                    f"a {sample.method} request needs a non-empty 'examples' list",
                    'e.g. {"examples": [{"x": 1.0}]}',
                )
            elif not all(isinstance(e, dict) for e in examples):
                self.add(
                    loc, "every entry of 'examples' must be a mapping of feature names to values"
                )
        inline = body.get("signature_name")
        if (
            inline is not None
            and sample.signature_name is not None
            and (inline != sample.signature_name)
        ):
            self.add(
                loc,
                f"the body's signature_name '{inline}' contradicts the sample's "
                f"signature_name '{sample.signature_name}'",
                "give it in one place",
            )

    # -- serving ----------------------------------------------------------------------------

    def check_serving(self) -> None:
        serving = self.spec.serving
        loc: Loc = ("serving",)
        n = serving.replicas
        grpc = range(serving.grpc_port, serving.grpc_port + n)
        rest = range(serving.rest_port, serving.rest_port + n)
        if set(grpc) & set(rest):
            if n == 1:
                message = f"grpc_port and rest_port are both {serving.grpc_port}"
            else:
                message = (
                    f"with {n} replicas the gRPC ports {grpc.start}-{grpc.stop - 1} and "
                    f"REST ports {rest.start}-{rest.stop - 1} overlap"
                )
            hint = (
                "use two different ports, e.g. 8500 and 8501"
                if n == 1
                else "N replicas publish the host port ranges grpc_port..grpc_port+N-1 and "
                "rest_port..rest_port+N-1; move rest_port"
            )
            self.add((*loc, "rest_port"), message, hint)
        for name, ports in (("grpc_port", grpc), ("rest_port", rest)):
            if ports.stop - 1 > 65535:
                self.add(
                    (*loc, name),
                    f"with {n} replicas the ports run past 65535 ({ports.start}-{ports.stop - 1})",
                    "choose a lower port",
                )
        try:
            ipaddress.ip_address(serving.bind_address)
        except ValueError:
            self.add(
                (*loc, "bind_address"),
                f"'{serving.bind_address}' is not an IP address",
                "Docker publishes ports on an IP: 127.0.0.1 (default), 0.0.0.0 or a host address",
            )
        if not _IMAGE_REFERENCE.match(serving.image):
            self.add(
                (*loc, "image"),
                f"'{serving.image}' is not a valid image reference",
                "e.g. tfstack/serving-runtime:latest (lowercase repository, optional tag)",
            )
        self.check_user(serving.user)
        memory = serving.resources.memory
        if memory is not None and _parse_bytes(memory) < MIN_MEMORY_BYTES:
            self.add(
                (*loc, "resources", "memory"),
                f"memory limit {memory} is below Docker's minimum of 6 MiB",
                "a TF Serving process needs hundreds of MiB; e.g. 2g",
            )
        self.check_flags()

    def check_user(self, user: str) -> None:
        loc: Loc = ("serving", "user")
        parts = user.split(":")
        if len(parts) > 2 or not all(re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", p) for p in parts):
            self.add(loc, f"'{user}' is not a user: give uid:gid such as 1000:1000")
            return
        if parts[0] in ("0", "root"):
            self.add(
                loc,
                "the server must not run as root",
                "use an unprivileged uid:gid such as 1000:1000",
            )

    def check_flags(self) -> None:
        serving = self.spec.serving
        session_parallelism = 0
        for index, flag in enumerate(serving.extra_flags):
            loc: Loc = ("serving", "extra_flags", index)
            if not flag.startswith("--") or len(flag) < 3:
                self.add(loc, f"'{flag}' is not a server flag", "write flags as --name=value")
                continue
            name, _, value = flag[2:].partition("=")
            if name in MANAGED_FLAGS:
                self.add(
                    loc,
                    f"--{name} is set by tfstack from {MANAGED_FLAGS[name]}; an extra "
                    "flag would silently override it",
                    f"set {MANAGED_FLAGS[name]} instead",
                )
            if name == "tensorflow_session_parallelism":
                try:
                    session_parallelism = int(value)
                except ValueError:
                    self.add(loc, f"--{name} needs a whole number, got '{value}'")
        if session_parallelism > 0 and (serving.intra_op_threads > 0 or serving.inter_op_threads):
            self.add(
                ("serving", "intra_op_threads"),
                "--tensorflow_session_parallelism cannot be combined with intra_op_threads/"
                "inter_op_threads (TF Serving refuses all three, and ignores the session "
                "setting when only one of the others is set)",
                "set either the session flag or intra/inter_op_threads",
            )

    # -- batching and monitoring -------------------------------------------------------------

    def check_batching(self) -> None:
        batching = self.spec.batching
        sizes = batching.allowed_batch_sizes
        loc: Loc = ("batching", "allowed_batch_sizes")
        for i in range(1, len(sizes)):
            if sizes[i] <= sizes[i - 1]:
                self.add(
                    (*loc, i),
                    f"allowed_batch_sizes must increase: {sizes[i]} follows {sizes[i - 1]}",
                    "list sizes in increasing order without repeats",
                )
        if sizes and sizes[-1] != batching.max_batch_size:
            self.add(
                (*loc, len(sizes) - 1),
                f"the last allowed batch size ({sizes[-1]}) must "
                f"equal max_batch_size ({batching.max_batch_size})",
                "TF Serving refuses the batching parameters otherwise",
            )

    def check_monitoring(self) -> None:
        path = self.spec.monitoring.path
        loc: Loc = ("monitoring", "path")
        segments = path.split("/")[1:]
        if path == "/" or path.rstrip("/") == "/v1" or path.startswith("/v1/"):
            self.add(
                loc,
                f"'{path}' collides with TF Serving's REST API paths",
                "use a dedicated path such as /monitoring/prometheus/metrics",
            )
        elif any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
            self.add(
                loc,
                f"'{path}' has empty, '.' or '..' segments",
                "use a plain path such as /monitoring/prometheus/metrics",
            )


def _nul_in_path(checker: _Checker, loc: Loc, path: str) -> bool:
    """Report (and say so) a path holding a NUL character, which no file system accepts."""
    if "\0" not in path:
        return False
    checker.add(loc, "path contains a NUL character", "remove the \\0 escape")
    return True


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in versions) if versions else "none"


def _policy_text(model: ModelSpec) -> str:
    policy = model.policy
    if isinstance(policy, LatestPolicy):
        return f"latest: {policy.latest}"
    if isinstance(policy, AllPolicy):
        return "all"
    return f"specific: {list(policy.specific)}"


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
