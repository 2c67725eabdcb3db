"""Unit tests for comment-preserving edits of config/stack.yaml (rollouts record their state)."""

from __future__ import annotations

import pytest
import yaml

from tfstack.errors import RolloutError
from tfstack.spec.edit import set_model_state

SPEC = """\
# yaml-language-server: $schema=stack.schema.json
# A header comment.
format: 1
project: demo   # the project

models:
  # first model: keep this comment
  - name: a
    policy:
      latest: 1                # newest on disk
    labels:
      stable: 1                # clients use this
    samples:
      - name: predict
        body: {"examples": [{"x": 1.0}, {"x": 2.0}]}   # flow maps inside flow lists
  - name: b                    # second model
    samples: []
  - name: c
    policy: {all: true}   # flow style
    labels: {stable: 1}
"""


def changed_lines(before: str, after: str) -> set[str]:
    return set(before.splitlines()) ^ set(after.splitlines())


def model(text: str, name: str) -> dict:  # type: ignore[type-arg]
    return next(m for m in yaml.safe_load(text)["models"] if m["name"] == name)


def test_only_the_policy_and_label_lines_change() -> None:
    """Comments, flow maps inside flow lists and every other line stay byte for byte."""
    after = set_model_state(SPEC, "a", policy={"specific": [1, 2]}, labels={"stable": 2})
    assert changed_lines(SPEC, after) == {
        "      latest: 1                # newest on disk",
        "      specific: [1, 2]         # newest on disk",
        "      stable: 1                # clients use this",
        "      stable: 2                # clients use this",
    }
    assert model(after, "a")["policy"] == {"specific": [1, 2]}


def test_labels_are_added_and_removed_in_place() -> None:
    """A new label goes after the existing ones; a removed label's line disappears."""
    added = set_model_state(
        SPEC, "a", policy={"specific": [1, 2]}, labels={"stable": 1, "canary": 2}
    )
    assert model(added, "a")["labels"] == {"stable": 1, "canary": 2}
    assert "      canary: 2" in added.splitlines()
    removed = set_model_state(added, "a", policy={"specific": [1]}, labels={"stable": 1})
    assert "canary" not in removed
    assert "# first model: keep this comment" in removed


def test_a_model_without_policy_or_labels_gets_both_blocks() -> None:
    """Missing policy and labels are inserted below the name, indented like the other keys."""
    after = set_model_state(SPEC, "b", policy={"specific": [1]}, labels={"stable": 1})
    assert model(after, "b")["policy"] == {"specific": [1]}
    assert model(after, "b")["labels"] == {"stable": 1}
    assert "  - name: b                    # second model" in after.splitlines()
    assert model(after, "a") == model(SPEC, "a")


def test_flow_style_blocks_are_rewritten_in_flow_style() -> None:
    """`policy: {all: true}` becomes `policy: {specific: [...]}` on the same line."""
    after = set_model_state(SPEC, "c", policy={"specific": [1, 2]}, labels={"stable": 2})
    assert "    policy: {specific: [1, 2]} # flow style" in after.splitlines()
    assert model(after, "c")["labels"] == {"stable": 2}


def test_removing_every_label_removes_the_block() -> None:
    """No labels left: the labels key goes too (the spec stays valid)."""
    after = set_model_state(SPEC, "a", policy={"latest": 1}, labels={})
    assert "labels" not in model(after, "a")
    assert model(after, "a")["samples"] == model(SPEC, "a")["samples"]


def test_restoring_the_original_state_gives_the_original_text_back() -> None:
    """Edit then edit back: identical text (the journal relies on exact restores anyway)."""
    edited = set_model_state(SPEC, "a", policy={"specific": [1]}, labels={"stable": 1})
    back = set_model_state(edited, "a", policy={"latest": 1}, labels={"stable": 1})
    assert back == SPEC


def test_block_style_version_lists_collapse_to_one_line() -> None:
    """A block list under `specific:` is replaced by a flow list (its item lines removed)."""
    text = (
        "models:\n  - name: m\n    policy:\n      specific:\n        - 1\n        - 2\n    x: 1\n"
    )
    after = set_model_state(text, "m", policy={"specific": [2, 3]}, labels={})
    assert after == "models:\n  - name: m\n    policy:\n      specific: [2, 3]\n    x: 1\n"


def test_an_unknown_model_is_an_error() -> None:
    """Editing a model the spec does not have fails clearly."""
    with pytest.raises(RolloutError, match="no model named 'zz'"):
        set_model_state(SPEC, "zz", policy={"latest": 1}, labels={})
