"""Phase 1 of loading a spec: YAML text to plain data, with the line of every node.

Size, encoding and syntax; one document whose top level is a mapping; no aliases (so no "billion
laughs"), bounded nesting, no duplicate keys, only plain JSON-like scalar types. Mapping keys are
always kept as strings (``1:`` is the key ``"1"``, ``on:`` is ``"on"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from tfstack.errors import SpecProblem

MAX_SPEC_BYTES = 4 * 1024 * 1024
"""A spec larger than this is refused before parsing (200 models take about 100 KiB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and sequences accepted (sample bodies included)."""

Loc = tuple[str | int, ...]

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


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


def count_noun(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Lines:
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
        self.lines = Lines()
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


def read_yaml(path: Path) -> tuple[Any, Lines, list[SpecProblem]]:
    """The spec's data (a mapping), its line map and the YAML-level problems."""
    file = str(path)
    reader = _YamlReader(file)

    def fail(
        message: str, line: int | None = None, hint: str | None = None
    ) -> tuple[Any, Lines, list[SpecProblem]]:
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
        kind = "empty" if data is None else with_article(kind_of(data))
        return fail(
            f"the top level must be a mapping of spec fields, but it is {kind}",
            reader.lines.at(()),
            "start with `project: ...` and `models: ...`",
        )
    return data, reader.lines, []


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def kind_of(value: Any) -> str:
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
