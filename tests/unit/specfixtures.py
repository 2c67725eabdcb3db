"""Test helpers for stack specs: a throw-away project with a config/ folder and a model repository.

A "SavedModel" for validation is a numbered directory holding ``saved_model.pb``: validation only
looks at file names, so these fixtures never need TensorFlow.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tfstack.errors import SpecProblem
from tfstack.spec import validate_spec


def valid_spec() -> dict[str, Any]:
    """A small valid spec (two models, labels, samples) as plain data; a fresh copy each call."""
    return copy.deepcopy(
        {
            "project": "demo",
            "model_repository": "../models",
            "models": [
                {
                    "name": "half_plus_two",
                    "policy": {"specific": [1, 2]},
                    "labels": {"stable": 1, "canary": 2},
                    "samples": [
                        {
                            "name": "predict",
                            "body": {"instances": [1.0, 2.0]},
                            "expect": {"predictions": [2.5, 3.0]},
                        }
                    ],
                },
                {"name": "half_plus_three", "policy": {"latest": 1}},
            ],
            "serving": {"grpc_port": 8500, "rest_port": 8501},
            "batching": {"enabled": True, "max_batch_size": 32, "allowed_batch_sizes": [8, 32]},
            "monitoring": {"enabled": True},
        }
    )


@dataclass
class Project:
    """``root/config/stack.yaml`` plus ``root/models/<model>/<version>/saved_model.pb``."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "config" / "stack.yaml"

    def write(self, content: dict[str, Any] | str | bytes) -> Path:
        self.spec.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            self.spec.write_bytes(content)
        elif isinstance(content, str):
            self.spec.write_text(content, encoding="utf-8")
        else:
            self.spec.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
        return self.spec

    def version(self, model: str, name: str | int, *, saved_model: bool = True) -> Path:
        directory = self.root / "models" / model / str(name)
        directory.mkdir(parents=True, exist_ok=True)
        if saved_model:
            (directory / "saved_model.pb").write_bytes(b"\x08\x01")
        return directory

    def with_models(self) -> Project:
        """Versions matching :func:`valid_spec`: half_plus_two 1 and 2, half_plus_three 1."""
        self.version("half_plus_two", 1)
        self.version("half_plus_two", 2)
        self.version("half_plus_three", 1)
        return self

    def problems(
        self, content: dict[str, Any] | str, *, check_disk: bool = True
    ) -> list[SpecProblem]:
        self.write(content)
        return validate_spec(self.spec, check_disk=check_disk)


def messages(problems: list[SpecProblem]) -> list[str]:
    return [p.message for p in problems]


def only(problems: list[SpecProblem]) -> SpecProblem:
    """The single problem expected; fails listing all of them otherwise."""
    assert len(problems) == 1, "\n".join(str(p) for p in problems)
    return problems[0]
