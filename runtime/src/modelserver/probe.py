"""``modelserver-probe``: a container healthcheck that passes only when every declared model serves.

Standard library only (it starts in milliseconds). Reads the model config (protobuf text format,
the ``model_config_list`` subset) or takes ``--model-name``, asks the REST status endpoint of each
model and exits 0 when each has its declared versions AVAILABLE (``specific`` policy) or at least
one AVAILABLE version (``latest`` / ``all``), and every labelled version is AVAILABLE. Otherwise it
prints what is missing and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<punct>[{}<>:\[\],;])"""
    r"""|(?P<word>[^\s{}<>:\[\],;"'#]+)""",
)


class ConfigSyntaxError(ValueError):
    pass


@dataclass
class DeclaredModel:
    name: str
    policy: str = "latest"
    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)


Node = dict[str, list[Any]]


def _tokens(text: str) -> list[str]:
    result: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigSyntaxError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = match.end()
        token = match.group("str") or match.group("punct") or match.group("word")
        if token:
            result.append(token)
    return result


def parse_text_proto(text: str) -> Node:
    """A generic parse of protobuf text format into ``{field: [values or nested nodes]}``."""
    tokens = _tokens(text)
    node, index = _parse_fields(tokens, 0, None)
    if index != len(tokens):
        raise ConfigSyntaxError(f"unexpected {tokens[index]!r}")
    return node


def _parse_fields(tokens: list[str], index: int, closer: str | None) -> tuple[Node, int]:
    node: Node = {}
    while index < len(tokens):
        token = tokens[index]
        if token in (",", ";"):
            index += 1
            continue
        if closer is not None and token == closer:
            return node, index + 1
        name = token
        index += 1
        if index < len(tokens) and tokens[index] == ":":
            index += 1
        if index >= len(tokens):
            raise ConfigSyntaxError(f"missing value for {name}")
        opener = tokens[index]
        if opener in ("{", "<"):
            child, index = _parse_fields(tokens, index + 1, "}" if opener == "{" else ">")
            node.setdefault(name, []).append(child)
        elif opener == "[":
            index += 1
            while tokens[index] != "]":
                if tokens[index] != ",":
                    node.setdefault(name, []).append(_scalar(tokens[index]))
                index += 1
            index += 1
        else:
            node.setdefault(name, []).append(_scalar(opener))
            index += 1
    if closer is not None:
        raise ConfigSyntaxError(f"missing {closer!r}")
    return node, index


def _scalar(token: str) -> Any:
    if token[:1] in ('"', "'"):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    try:
        return int(token, 0)
    except ValueError:
        return token


def declared_models(text: str) -> list[DeclaredModel]:
    root = parse_text_proto(text)
    models: list[DeclaredModel] = []
    for config_list in root.get("model_config_list", []):
        for config in config_list.get("config", []):
            model = DeclaredModel(name=str(config.get("name", [""])[-1]))
            for policy in config.get("model_version_policy", []):
                if "specific" in policy:
                    model.policy = "specific"
                    for specific in policy["specific"]:
                        model.versions += [int(v) for v in specific.get("versions", [])]
                elif "all" in policy:
                    model.policy = "all"
            for label in config.get("version_labels", []):
                model.labels[str(label["key"][-1])] = int(label["value"][-1])
            models.append(model)
    return models


def available_versions(host: str, port: int, name: str, timeout: float) -> set[int]:
    url = f"http://{host}:{port}/v1/models/{name}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        document = json.loads(response.read())
    return {
        int(entry["version"])
        for entry in document.get("model_version_status", [])
        if entry.get("state") == "AVAILABLE"
    }


def missing(model: DeclaredModel, available: set[int]) -> list[str]:
    problems = []
    if model.policy == "specific":
        problems += [
            f"model {model.name}: version {v} is not AVAILABLE"
            for v in sorted(set(model.versions) - available)
        ]
    elif not available:
        problems.append(f"model {model.name}: no version is AVAILABLE")
    problems += [
        f"model {model.name}: label {label} -> version {v} is not AVAILABLE"
        for label, v in sorted(model.labels.items())
        if v not in available
    ]
    return problems


def check(models: Sequence[DeclaredModel], host: str, port: int, timeout: float) -> list[str]:
    problems: list[str] = []
    for model in models:
        try:
            available = available_versions(host, port, model.name, timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace").strip()
            problems.append(f"model {model.name}: HTTP {exc.code} {body}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            problems.append(f"model {model.name}: REST API on {host}:{port} unreachable: {reason}")
            continue
        problems += missing(model, available)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelserver-probe",
        description="Exit 0 when every declared model is AVAILABLE on the REST API.",
    )
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-config", default="", help="model config file (text proto)")
    parser.add_argument(
        "--model-name",
        default=os.environ.get("MODEL_NAME", ""),
        help="a single model to check when no --model-config is given (default: $MODEL_NAME)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    if args.model_config:
        try:
            with open(args.model_config, encoding="utf-8") as handle:
                models = declared_models(handle.read())
        except (OSError, ConfigSyntaxError, KeyError, ValueError) as exc:
            print(f"modelserver-probe: cannot read {args.model_config}: {exc}", file=sys.stderr)
            return 2
    elif args.model_name:
        models = [DeclaredModel(args.model_name)]
    else:
        print("modelserver-probe: give --model-config or --model-name", file=sys.stderr)
        return 2
    if not models:
        print(f"modelserver-probe: no models declared in {args.model_config}", file=sys.stderr)
        return 2
    problems = check(models, args.host, args.rest_port, args.timeout)
    for problem in problems:
        print(f"modelserver-probe: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
