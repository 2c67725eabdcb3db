"""The YAML phase of spec loading: unreadable, unsafe or ambiguous files get one clear problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfstack.errors import SpecError
from tfstack.spec import load_spec, read_yaml, validate_spec
from tfstack.spec.yamlread import MAX_DEPTH, MAX_SPEC_BYTES

from .specfixtures import Project, only


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n", "   \n", "# only a comment\n# and another\n"])
def test_empty_file_is_reported(project: Project, text: str) -> None:
    """An empty (or comment-only) spec says it is empty instead of failing on a missing field."""
    problem = only(project.problems(text))
    assert problem.message == "the spec is empty"
    assert problem.file == str(project.spec)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A wrong --spec path is a spec problem (exit 2), not a FileNotFoundError traceback."""
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "nope.yaml")
    assert only(caught.value.problems).message == "spec file not found"
    assert caught.value.exit_code == 2


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    """Pointing --spec at a directory is reported as such."""
    assert "is a directory" in only(validate_spec(tmp_path)).message


def test_syntax_error_names_the_line(project: Project) -> None:
    """Broken YAML names the line where the parser gave up and what it expected."""
    problem = only(project.problems("project: demo\nmodels: [unclosed\n"))
    assert problem.message.startswith("not valid YAML: ")
    assert problem.line == 3  # the end of the file, where the ']' was expected
    assert problem.hint is not None


def test_tab_indentation_is_a_yaml_error(project: Project) -> None:
    """Tabs in indentation are a YAML syntax error with a line number."""
    problem = only(project.problems("project: demo\nmodels:\n\t- name: a\n"))
    assert problem.message.startswith("not valid YAML")
    assert problem.line == 3


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- a\n- b\n", "a list"),
        ("just text\n", "a string"),
        ("42\n", "an integer"),
        ("~\n", "empty"),
    ],
)
def test_top_level_must_be_a_mapping(project: Project, text: str, kind: str) -> None:
    """A spec that is a list, a scalar or null says the top level must be a mapping."""
    problem = only(project.problems(text))
    assert problem.message == f"the top level must be a mapping of spec fields, but it is {kind}"


def test_non_utf8_is_reported(project: Project) -> None:
    """Bytes that are not UTF-8 get a message about the encoding, not a UnicodeDecodeError."""
    project.write(b"project: \xff\xfe\n")
    assert "not UTF-8" in only(validate_spec(project.spec)).message


def test_utf8_bom_is_accepted(project: Project) -> None:
    """Editors on Windows write a BOM; it is not a problem."""
    project.write("\ufeffproject: demo\nmodels: [{name: a}]\n".encode())
    assert validate_spec(project.spec, check_disk=False) == []


def test_oversized_file_is_refused_before_parsing(project: Project) -> None:
    """A spec above the size cap is refused without being parsed."""
    project.write(b"# " + b"x" * MAX_SPEC_BYTES + b"\n")
    assert "larger than" in only(validate_spec(project.spec)).message


def test_duplicate_keys_name_both_lines(project: Project) -> None:
    """Duplicate keys (YAML would silently keep the last) are an error naming both lines."""
    problem = only(project.problems("project: a\nmodels: [{name: x}]\nproject: b\n"))
    assert str(problem) == (
        f"{project.spec}:3: project: duplicate key 'project' (first at line 1, again at line 3) "
        "(keep one of them; YAML would silently use the last)"
    )


def test_nested_duplicate_keys_are_found_too(project: Project) -> None:
    """Duplicate keys deep inside a model are reported with their YAML path."""
    text = "project: a\nmodels:\n  - name: x\n    labels:\n      stable: 1\n      stable: 2\n"
    problem = only(project.problems(text))
    assert problem.yaml_path == "models[0].labels.stable"
    assert (problem.line, "first at line 5") == (6, problem.message.split("(")[1].split(",")[0])


def test_every_duplicate_is_reported(project: Project) -> None:
    """All duplicate keys are listed at once, not just the first."""
    text = "project: a\nproject: b\nmodels: []\nmodels: []\n"
    assert [p.yaml_path for p in project.problems(text)] == ["project", "models"]


def test_aliases_are_refused(project: Project) -> None:
    """Anchors/aliases are refused outright, with the alias's line and a hint."""
    text = "project: demo\nx: &m {name: a}\nmodels:\n  - *m\n"
    problem = only(project.problems(text))
    assert problem.message == "YAML aliases are not allowed (found *m)"
    assert (problem.line, problem.yaml_path) == (4, "models[0]")
    assert problem.hint is not None and "expand" in problem.hint


def test_merge_keys_are_refused(project: Project) -> None:
    """`<<: *base` needs an alias and is therefore refused as well."""
    text = "project: demo\nbase: &b {policy: {latest: 1}}\nmodels:\n  - <<: *b\n    name: a\n"
    assert "aliases are not allowed" in only(project.problems(text)).message


def test_billion_laughs_is_refused_quickly(project: Project) -> None:
    """A YAML bomb never expands: every alias is refused while parsing, in linear time."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    problems = project.problems("\n".join(lines) + "\n")
    assert len(problems) == 29 * 9
    assert all("aliases are not allowed" in p.message for p in problems)


def test_deep_nesting_is_refused(project: Project) -> None:
    """Nesting beyond the cap is refused (no recursion error, no memory blow-up)."""
    depth = MAX_DEPTH + 5
    problem = only(project.problems("project: demo\nx: " + "[" * depth + "]" * depth + "\n"))
    assert problem.message == f"nesting deeper than {MAX_DEPTH} levels"


def test_very_deep_nesting_does_not_recurse(project: Project) -> None:
    """100,000 nested brackets are refused (by libyaml's own cap here), without a RecursionError."""
    problem = only(project.problems("x: " + "[" * 100_000 + "]" * 100_000 + "\n"))
    assert "nesting" in problem.message


def test_nesting_within_the_cap_is_fine(project: Project) -> None:
    """Sample bodies may nest (e.g. image tensors) up to the cap."""
    depth = MAX_DEPTH - 6
    body = "{instances: " + "[" * depth + "1.0" + "]" * depth + "}"
    text = f"project: demo\nmodels:\n  - name: a\n    samples: [{{body: {body}}}]\n"
    assert project.problems(text, check_disk=False) == []


@pytest.mark.parametrize(
    "text",
    [
        "project: !!python/object/apply:os.system [echo hi]\nmodels: []\n",
        "project: !!binary aGVsbG8=\nmodels: []\n",
        "project: !custom x\nmodels: []\n",
        "project: demo\nmodels: !!set {a: null}\n",
    ],
)
def test_non_json_tags_are_refused(project: Project, text: str) -> None:
    """Python objects, binary, sets and custom tags are refused with the tag named."""
    problem = only(project.problems(text))
    assert problem.message.startswith("unsupported YAML tag ")


def test_multiple_documents_are_refused(project: Project) -> None:
    """A second `---` document is an error instead of being silently ignored."""
    problem = only(project.problems("project: a\nmodels: [{name: x}]\n---\nproject: b\n"))
    assert "more than one YAML document" in problem.message


def test_complex_keys_are_refused(project: Project) -> None:
    """A mapping or list used as a key is refused."""
    assert "mapping key" in only(project.problems("? [a, b]\n: c\n")).message


def test_keys_stay_strings_and_lines_are_recorded(project: Project) -> None:
    """Keys like `1` or `on` stay strings; values keep YAML types; lines are 1-based per path."""
    project.write("project: demo\nx:\n  1: on\n  on: 2020-01-02\n  n: ~\n  f: 1.5\n")
    data, lines, problems = read_yaml(project.spec)
    assert problems == []
    assert data["x"] == {"1": True, "on": "2020-01-02", "n": None, "f": 1.5}
    assert lines.at(("x", "on")) == 4
    assert lines.at(("x", "missing", 3)) == 2  # falls back to the nearest known parent
