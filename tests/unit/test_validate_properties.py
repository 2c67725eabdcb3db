"""Property tests: any input gives a spec or a SpecError from load_spec, and nothing is written.

Inputs are random text and bytes, and valid specs mutated the ways people break them: wrong types,
unknown keys, deleted fields, duplicate keys, aliases, tags, truncation. Runs are bounded so the
unit tier stays fast.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfstack.errors import SpecError
from tfstack.spec import StackSpec, load_spec

from .specfixtures import Project, valid_spec

BOUNDED = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Loc = tuple[str | int, ...]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path).with_models()
    (tmp_path / "config" / "samples").mkdir(parents=True)
    (tmp_path / "config" / "samples" / "p.json").write_text('{"instances": [1.0]}')
    return project


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under root with its size and mtime."""
    state: dict[str, tuple[int, int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            info = os.stat(os.path.join(directory, name))
            state[os.path.join(directory, name)] = (info.st_size, info.st_mtime_ns)
    return state


def load_checked(project: Project, content: str | bytes, *, check_disk: bool = True) -> None:
    """The property: a StackSpec or a well-formed SpecError; nothing on disk changes."""
    path = project.write(content)
    before = snapshot(project.root)
    line_count = len(content.splitlines()) if content else 0
    try:
        spec = load_spec(path, check_disk=check_disk)
    except SpecError as error:
        assert error.exit_code == 2
        assert error.problems, "a SpecError always carries at least one problem"
        for problem in error.problems:
            assert problem.message
            assert problem.line is None or 1 <= problem.line <= max(line_count, 1) + 1
            str(problem)
        str(error)
    else:
        assert isinstance(spec, StackSpec)
    assert snapshot(project.root) == before


def paths(data: Any, prefix: Loc = ()) -> list[Loc]:
    """Every path to a value in nested data."""
    found: list[Loc] = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, (*prefix, index))
    return found


def parent_and_key(data: Any, loc: Loc) -> tuple[Any, str | int]:
    for part in loc[:-1]:
        data = data[part]
    return data, loc[-1]


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec with one to three mutations: replaced values, deletions, unknown keys."""
    spec = valid_spec()
    spec["models"][0]["samples"].append({"name": "file", "body_file": "samples/p.json"})
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        targets = paths(spec)
        if not targets:
            break
        loc = draw(st.sampled_from(targets))
        parent, key = parent_and_key(spec, loc)
        action = draw(st.sampled_from(["replace", "delete", "unknown_key"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return spec


@BOUNDED
@given(spec=mutated_specs())
def test_mutated_specs_never_raise_anything_else(project: Project, spec: dict[str, Any]) -> None:
    """Wrong types, unknown keys, deleted fields: SpecError or a valid spec, never a crash."""
    load_checked(project, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


@BOUNDED
@given(spec=mutated_specs())
def test_mutated_specs_without_disk_checks(project: Project, spec: dict[str, Any]) -> None:
    """The same holds with check_disk=False (the path render uses for generated models)."""
    load_checked(project, yaml.safe_dump(spec, sort_keys=False), check_disk=False)


@BOUNDED
@given(text=st.text(max_size=300))
def test_random_text(project: Project, text: str) -> None:
    """Arbitrary text (control characters, tabs, odd unicode) never escapes as another error."""
    load_checked(project, text)


@BOUNDED
@given(raw=st.binary(max_size=300))
def test_random_bytes(project: Project, raw: bytes) -> None:
    """Arbitrary bytes, including invalid UTF-8, give SpecError."""
    load_checked(project, raw)


YAML_PIECES = [
    "project: demo\n",
    "models:\n",
    "  - name: a\n",
    "    labels: {stable: 1}\n",
    "&x ",
    "*x ",
    "<<: *x\n",
    "!!python/object:os.system ",
    "!!binary ",
    "? ",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "\t",
    "'",
    '"',
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "# c\n",
    "\n",
    "  ",
    "policy: {latest: 1}\n",
    "project: other\n",
    "~",
    "0x1F",
    ".inf",
    "2020-01-01",
    "yes",
    "\\",
]


@BOUNDED
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=25))
def test_yaml_fragments(project: Project, pieces: list[str]) -> None:
    """Random arrangements of YAML syntax (anchors, aliases, tags, directives) never crash."""
    load_checked(project, "".join(pieces))


@BOUNDED
@given(data=st.data())
def test_duplicate_keys_anywhere_are_reported(project: Project, data: st.DataObject) -> None:
    """Repeating any line that holds a key gives a duplicate-key problem naming both lines."""
    text = yaml.safe_dump(valid_spec(), sort_keys=False, default_flow_style=False)
    lines = text.splitlines(keepends=True)
    candidates = [
        i
        for i, line in enumerate(lines)
        if ":" in line
        and not line.lstrip().startswith("- ")
        and line.rstrip().endswith(("1", "2", "true", "false", "demo", "../models"))
    ]
    index = data.draw(st.sampled_from(candidates))
    duplicated = "".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    load_checked(project, duplicated)
    with pytest.raises(SpecError) as caught:
        load_spec(project.spec)
    assert any(
        p.message.startswith("duplicate key") and f"first at line {index + 1}" in p.message
        for p in caught.value.problems
    )


@BOUNDED
@given(data=st.data())
def test_truncated_specs(project: Project, data: st.DataObject) -> None:
    """A spec cut anywhere (an interrupted editor save) gives SpecError or a valid spec."""
    text = yaml.safe_dump(
        valid_spec(), sort_keys=False, default_flow_style=data.draw(st.booleans())
    )
    load_checked(project, text[: data.draw(st.integers(min_value=0, max_value=len(text)))])


@BOUNDED
@given(data=st.data())
def test_aliases_anywhere_are_refused(project: Project, data: st.DataObject) -> None:
    """An alias substituted for any value is refused; the spec is never loaded."""
    spec = valid_spec()
    loc = data.draw(st.sampled_from(paths(spec)))
    parent, key = parent_and_key(spec, loc)
    marker = "ALIAS-MARKER"
    parent[key] = marker
    text = "base: &base 1\n" + yaml.safe_dump(spec, sort_keys=False).replace(f"{marker}", "*base")
    load_checked(project, text)
    with pytest.raises(SpecError) as caught:
        load_spec(project.spec, check_disk=False)
    assert any("aliases are not allowed" in p.message for p in caught.value.problems)


def test_valid_spec_round_trips(project: Project) -> None:
    """Control for the properties above: the unmutated spec loads (so mutations cause failures)."""
    spec = copy.deepcopy(valid_spec())
    load_checked(project, yaml.safe_dump(spec, sort_keys=False))
    assert load_spec(project.spec).project == "demo"
