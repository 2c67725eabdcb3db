"""The schema phase: pydantic's errors become problems with YAML path, line, expectation, hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tfstack.spec import format_yaml_path

from .specfixtures import Project, only, valid_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def check(project: Project, data: dict[str, Any] | str) -> list[Any]:
    return project.problems(data, check_disk=False)


def test_valid_spec_has_no_problems(project: Project) -> None:
    """The reference spec is valid, so every other test's problem comes from its mutation."""
    assert check(project, valid_spec()) == []


def test_unknown_top_level_key_suggests_the_nearest(project: Project) -> None:
    """A typo in a top-level key names the line and suggests the intended key."""
    problem = only(check(project, "project: demo\nmodels: [{name: a}]\nmonitorng: {}\n"))
    assert str(problem) == (
        f"{project.spec}:3: monitorng: unknown key 'monitorng' (did you mean 'monitoring'?)"
    )


def test_unknown_nested_key_suggests_from_that_object(project: Project) -> None:
    """Suggestions come from the keys of the object the typo is in (here a model)."""
    text = "project: demo\nmodels:\n  - name: a\n    lables: {stable: 1}\n"
    problem = only(check(project, text))
    assert (problem.yaml_path, problem.line) == ("models[0].lables", 4)
    assert problem.hint == "did you mean 'labels'?"


def test_unknown_key_without_close_match_lists_valid_keys(project: Project) -> None:
    """When nothing is close, the hint lists the valid keys of that object."""
    text = "project: demo\nmodels: [{name: a}]\nmonitoring: {zzz: 1}\n"
    assert only(check(project, text)).hint == (
        "valid keys: enabled, path, prometheus, prometheus_port, prometheus_image, "
        "scrape_interval_seconds, retention_hours"
    )


def test_wrong_type_says_what_was_expected(project: Project) -> None:
    """A wrong type names the path, the line, the expected type and the value given."""
    spec = valid_spec()
    spec["serving"]["grpc_port"] = "eighty"
    problem = only(check(project, spec))
    assert problem.yaml_path == "serving.grpc_port"
    assert problem.message == 'expected a whole number, got "eighty"'
    assert (
        problem.line is not None
        and "grpc_port" in project.spec.read_text().splitlines()[problem.line - 1]
    )


def test_label_value_path_is_exact(project: Project) -> None:
    """The issue's example: models[N].labels.<label> with the label's own line."""
    text = (
        "project: demo\nmodels:\n  - name: a\n  - name: b\n  - name: c\n"
        "    labels:\n      stable: 1\n      canary: two\n"
    )
    problem = only(check(project, text))
    assert (problem.yaml_path, problem.line) == ("models[2].labels.canary", 8)
    assert problem.message == 'expected a whole number, got "two"'


def test_bad_label_name_is_explained(project: Project) -> None:
    """An invalid label name says what a label may contain."""
    text = "project: demo\nmodels:\n  - name: a\n    labels: {'my label': 1}\n"
    problem = only(check(project, text))
    assert problem.yaml_path == 'models[0].labels["my label"]'
    assert problem.message.startswith("invalid label name: expected a label of letters")


def test_missing_required_field_points_at_its_parent(project: Project) -> None:
    """A missing field names itself and the line of the object that lacks it."""
    problem = only(check(project, "project: demo\nmodels:\n  - policy: {latest: 1}\n"))
    assert problem.message == "required field 'name' is missing"
    assert (problem.yaml_path, problem.line) == ("models[0].name", 3)


def test_missing_top_level_fields_are_all_listed(project: Project) -> None:
    """Every missing required field is reported, not just the first."""
    problems = check(project, "serving: {}\n")
    assert sorted(p.message for p in problems) == [
        "required field 'models' is missing",
        "required field 'project' is missing",
    ]


def test_bounds_are_explained(project: Project) -> None:
    """Numbers out of range say the bound and the value."""
    spec = valid_spec()
    spec["serving"]["replicas"] = 0
    spec["serving"]["rest_port"] = 70000
    assert sorted(p.message for p in check(project, spec)) == [
        "must be <= 65535, got 70000",
        "must be >= 1, got 0",
    ]


def test_empty_model_list_is_refused(project: Project) -> None:
    """A stack needs at least one model."""
    assert only(check(project, "project: demo\nmodels: []\n")).message == (
        "must have at least 1 item"
    )


def test_bad_project_name_says_what_compose_accepts(project: Project) -> None:
    """Project names follow Compose's rules, explained in words rather than a regex."""
    problem = only(check(project, "project: My Stack\nmodels: [{name: a}]\n"))
    assert problem.message.startswith("expected a Compose project name: lowercase letters")


def test_sample_method_lists_the_choices(project: Project) -> None:
    """A wrong enum value lists the accepted ones."""
    text = "project: demo\nmodels:\n  - name: a\n    samples: [{method: infer, body: {}}]\n"
    problem = only(check(project, text))
    assert problem.yaml_path == "models[0].samples[0].method"
    assert problem.message == "expected 'predict', 'classify' or 'regress', got \"infer\""


def test_format_version_is_checked(project: Project) -> None:
    """An unknown spec format is refused (future formats need a newer tfstack)."""
    problem = only(check(project, "format: 2\nproject: demo\nmodels: [{name: a}]\n"))
    assert (problem.yaml_path, problem.message) == ("format", "expected 1, got 2")


def test_sample_needs_exactly_one_body(project: Project) -> None:
    """A sample with both or neither body/body_file gets the model's own message."""
    text = "project: demo\nmodels:\n  - name: a\n    samples:\n      - name: s\n"
    problem = only(check(project, text))
    assert problem.message == "give exactly one of 'body' or 'body_file'"
    assert (problem.yaml_path, problem.line) == ("models[0].samples[0]", 5)


@pytest.mark.parametrize(
    ("policy", "message", "hint"),
    [
        (
            "all",
            "expected a version policy mapping: `latest: N`, `all: true` or `specific: [1, 2]`; "
            'got "all"',
            "write `policy: {all: true}`",
        ),
        (
            "{lastest: 2}",
            "unknown version policy 'lastest'; expected `latest: N`, `all: true` or "
            "`specific: [1, 2]`",
            "did you mean 'latest'?",
        ),
        (
            "{latest: 2, all: true}",
            "a version policy takes exactly one of latest, all and specific; got latest and all",
            "keep one: `latest: N`, `all: true` or `specific: [1, 2]`",
        ),
        (
            "3",
            "expected a version policy mapping: `latest: N`, `all: true` or `specific: [1, 2]`; "
            "got 3",
            None,
        ),
    ],
)
def test_bad_policy_gets_one_clear_message(
    project: Project, policy: str, message: str, hint: str | None
) -> None:
    """A bad policy yields one message about policies, not three union branches' errors."""
    problem = only(check(project, f"project: demo\nmodels:\n  - name: a\n    policy: {policy}\n"))
    assert (problem.yaml_path, problem.line, problem.message, problem.hint) == (
        "models[0].policy",
        4,
        message,
        hint,
    )


@pytest.mark.parametrize(
    ("policy", "path", "message"),
    [
        ("{latest: 0}", "models[0].policy.latest", "must be >= 1, got 0"),
        ("{specific: []}", "models[0].policy.specific", "must have at least 1 item"),
        ("{specific: [1, x]}", "models[0].policy.specific[1]", 'expected a whole number, got "x"'),
        ("{all: false}", "models[0].policy.all", "expected true, got false"),
    ],
)
def test_policy_errors_inside_the_chosen_kind(
    project: Project, policy: str, path: str, message: str
) -> None:
    """When the policy kind is clear, the error is about that kind's value only."""
    problem = only(check(project, f"project: demo\nmodels:\n  - name: a\n    policy: {policy}\n"))
    assert (problem.yaml_path, problem.message) == (path, message)


def test_policy_with_extra_key_names_it(project: Project) -> None:
    """An extra key next to a valid policy kind is an unknown key of the policy."""
    text = "project: demo\nmodels:\n  - name: a\n    policy: {latest: 1, keep: 2}\n"
    problem = only(check(project, text))
    assert (problem.yaml_path, problem.message) == ("models[0].policy.keep", "unknown key 'keep'")


def test_all_schema_problems_are_reported_in_file_order(project: Project) -> None:
    """Many mistakes give many problems, sorted by line."""
    text = (
        "project: demo\nmodels:\n  - name: a\n    policy: {latest: 0}\n  - nme: b\n"
        "serving:\n  grpc_port: x\n  bogus: 1\n"
    )
    problems = check(project, text)
    assert [(p.line, p.yaml_path) for p in problems] == [
        (4, "models[0].policy.latest"),
        (5, "models[1].name"),
        (5, "models[1].nme"),
        (7, "serving.grpc_port"),
        (8, "serving.bogus"),
    ]


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("models", 2, "labels", "canary"), "models[2].labels.canary"),
        ((), ""),
        (("labels", "my.key"), 'labels["my.key"]'),
        ((0,), "[0]"),
    ],
)
def test_yaml_paths_are_formatted_like_the_issue_says(loc: tuple[Any, ...], text: str) -> None:
    """YAML paths read like `models[2].labels.canary`; odd keys are quoted."""
    assert format_yaml_path(loc) == text
