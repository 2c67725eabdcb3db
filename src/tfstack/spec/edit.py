"""Round-trip edits of ``config/stack.yaml`` that keep the user's comments, order and layout.

Rollouts record their state in the spec (a model's version policy and labels), because the spec is
the single source of truth: ``invoke up`` after a rollout must change nothing. ruamel.yaml's
round-trip mode keeps comments, key order, flow/block styles and quoting of everything the edit
does not touch; only the model's ``policy`` and ``labels`` values are replaced.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from tfstack.errors import RolloutError


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines the user wrote
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _load(text: str, model: str) -> Any:
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        raise RolloutError(
            f"the spec does not parse as YAML any more: {exc}",
            model=model,
            hint="run `invoke validate` and fix the spec",
        ) from exc


def _dump(document: Any) -> str:
    out = io.StringIO()
    _yaml().dump(document, out)
    return out.getvalue()


def _flow_list(values: Sequence[int]) -> CommentedSeq:
    seq = CommentedSeq(list(values))
    seq.fa.set_flow_style()
    return seq


def _find_model(document: Any, model: str) -> CommentedMap:
    models = document.get("models") if isinstance(document, Mapping) else None
    if isinstance(models, list):
        for entry in models:
            if isinstance(entry, CommentedMap) and entry.get("name") == model:
                return entry
    raise RolloutError(
        f"the spec has no model named {model!r}",
        model=model,
        hint="check `models[].name` in the spec (`invoke validate`)",
    )


def _policy_value(key: str, value: Any) -> str:
    if key == "specific":
        return "[" + ", ".join(str(int(v)) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value))


def _flow_mapping(items: Mapping[str, Any], policy: bool) -> str:
    parts = [f"{k}: {_policy_value(k, v) if policy else int(v)}" for k, v in items.items()]
    return "{" + ", ".join(parts) + "}"


def _with_value(line: str, key: str, value: str) -> str:
    """``line`` (``<indent>old_key: old_value   # comment``) with a new key and value; the
    indentation and the trailing comment (at its column when it fits) are kept."""
    body = line.rstrip("\n")
    newline = line[len(body) :]
    indent = body[: len(body) - len(body.lstrip())]
    prefix = body[len(indent) :]
    if prefix.startswith("- "):  # a key sharing its line with the list item dash
        indent += "- "
        prefix = prefix[2:]
    colon = prefix.find(":")
    rest = prefix[colon + 1 :] if colon >= 0 else ""
    comment_at = rest.find(" #")
    text = f"{indent}{key}: {value}"
    if comment_at >= 0:
        column = len(body) - len(rest) + comment_at + 1
        comment = rest[comment_at + 1 :]
        gap = max(column - len(text), 1)
        text += " " * gap + comment
    return text + (newline or "\n")


def _splice(
    text: str, document: Any, model: str, policy: Mapping[str, Any], labels: Mapping[str, int]
) -> str | None:
    """Line-level edit: only the lines holding the model's policy and labels change.

    Returns None for layouts it does not handle (multi-line flow mappings...); the caller then
    falls back to a ruamel round trip.
    """
    lines = text.splitlines(keepends=True)
    entry = _find_model(document, model)
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line exclusive, new lines)
    key_column = entry.lc.key("name")[1]
    indent = " " * key_column
    child = indent + "  "
    policy_end: int | None = None  # last line of the policy block

    current_policy = entry.get("policy")
    if current_policy is None:
        block = [f"{indent}policy:\n"]
        block += [f"{child}{k}: {_policy_value(k, v)}\n" for k, v in policy.items()]
        anchor = entry.lc.key("name")[0]
        edits.append((anchor + 1, anchor + 1, block))
        policy_end = anchor
        policy_block_new = block
    elif isinstance(current_policy, CommentedMap) and current_policy.fa.flow_style():
        line = entry.lc.key("policy")[0]
        if entry.lc.value("policy")[0] != line or len(current_policy) != 1:
            return None
        edits.append(
            (line, line + 1, [_with_value(lines[line], "policy", _flow_mapping(policy, True))])
        )
        policy_end = line
        policy_block_new = []
    elif isinstance(current_policy, CommentedMap) and len(current_policy) == 1 and len(policy) == 1:
        (old_key,) = list(current_policy)
        (new_key, new_value) = next(iter(policy.items()))
        line = current_policy.lc.key(old_key)[0]
        end = line + 1
        old_value = current_policy[old_key]
        if isinstance(old_value, CommentedSeq) and not old_value.fa.flow_style():
            if old_value:
                end = old_value.lc.item(len(old_value) - 1)[0] + 1
        elif (
            isinstance(old_value, (CommentedSeq, CommentedMap))
            and current_policy.lc.value(old_key)[0] != line
        ):
            return None
        edits.append(
            (line, end, [_with_value(lines[line], new_key, _policy_value(new_key, new_value))])
        )
        policy_end = end - 1
        policy_block_new = []
    else:
        return None

    current_labels = entry.get("labels")
    if current_labels is None:
        if labels:
            block = [f"{indent}labels:\n"] + [f"{child}{k}: {int(v)}\n" for k, v in labels.items()]
            if current_policy is None:
                policy_block_new.extend(block)
            else:
                assert policy_end is not None
                edits.append((policy_end + 1, policy_end + 1, block))
    elif isinstance(current_labels, CommentedMap) and current_labels.fa.flow_style():
        line = entry.lc.key("labels")[0]
        if entry.lc.value("labels")[0] != line:
            return None
        if labels:
            edits.append(
                (line, line + 1, [_with_value(lines[line], "labels", _flow_mapping(labels, False))])
            )
        else:
            edits.append((line, line + 1, []))
    elif isinstance(current_labels, CommentedMap):
        if not current_labels:
            return None
        keys = list(current_labels)
        if not labels:
            first = entry.lc.key("labels")[0]
            last = current_labels.lc.key(keys[-1])[0]
            edits.append((first, last + 1, []))
        else:
            label_indent = " " * current_labels.lc.key(keys[0])[1]
            for key in keys:
                line = current_labels.lc.key(key)[0]
                if current_labels.lc.value(key)[0] != line:
                    return None
                if key in labels:
                    edits.append(
                        (line, line + 1, [_with_value(lines[line], key, str(int(labels[key])))])
                    )
                else:
                    edits.append((line, line + 1, []))
            added = [f"{label_indent}{k}: {int(v)}\n" for k, v in labels.items() if k not in keys]
            if added:
                last = current_labels.lc.key(keys[-1])[0]
                edits.append((last + 1, last + 1, added))
    else:
        return None

    for first, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[first:end] = new
    return "".join(lines)


def _state_of(text: str, model: str) -> tuple[dict[str, Any], dict[str, int]]:
    entry = _find_model(_load(text, model), model)
    policy = entry.get("policy") or {}
    labels = entry.get("labels") or {}
    return (
        {k: ([int(x) for x in v] if k == "specific" else v) for k, v in policy.items()},
        {str(k): int(v) for k, v in labels.items()},
    )


def _round_trip(
    document: Any, model: str, policy: Mapping[str, Any], labels: Mapping[str, int]
) -> str:
    entry = _find_model(document, model)
    node = CommentedMap()
    for key, value in policy.items():
        node[key] = _flow_list([int(v) for v in value]) if key == "specific" else value
    entry["policy"] = node
    if labels:
        entry["labels"] = CommentedMap((k, int(v)) for k, v in labels.items())
    elif "labels" in entry:
        del entry["labels"]
    return _dump(document)


def set_model_state(
    text: str, model: str, *, policy: Mapping[str, Any], labels: Mapping[str, int]
) -> str:
    """The spec text with ``model``'s policy and labels replaced; every other line as written.

    The edit is made on lines (ruamel.yaml finds them), so comments, quoting and layout anywhere
    else stay byte for byte; the result is parsed again and compared with what was asked. Layouts
    the line edit does not handle fall back to a ruamel round trip (comments still kept).
    """
    wanted_policy = {k: ([int(x) for x in v] if k == "specific" else v) for k, v in policy.items()}
    wanted_labels = {str(k): int(v) for k, v in labels.items()}
    document = _load(text, model)
    edited = _splice(text, document, model, wanted_policy, wanted_labels)
    if edited is not None:
        try:
            if _state_of(edited, model) == (wanted_policy, wanted_labels):
                return edited
        except RolloutError:
            pass
    result = _round_trip(_load(text, model), model, wanted_policy, wanted_labels)
    if _state_of(result, model) != (wanted_policy, wanted_labels):
        raise RolloutError(
            "editing the spec did not produce the wanted policy and labels",
            model=model,
            hint="edit the model's `policy` and `labels` by hand",
        )
    return result
