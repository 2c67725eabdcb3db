"""Smoke requests: every spec sample against each model's default, versions and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tfstack.errors import StackError
from tfstack.serving.client import (
    ModelRef,
    RestClient,
    ServingRequestError,
    matches_expected,
    summarize,
)
from tfstack.spec.model import sample_body
from tfstack.stack.plan import SERVICE, Loaded


@dataclass
class SmokeResult:
    model: str
    sample: str
    target: str  # "default", "version 2", "label stable"
    ok: bool
    detail: str = ""
    answer: Any = None
    replica: str = ""  # the container asked (set with several replicas)


def smoke(loaded: Loaded, rest: RestClient, *, replica: str = "") -> list[SmokeResult]:
    """Every sample against each model's default, every declared version and every label.

    Every request must answer 200; ``expect`` is checked on the default (unpinned) request, since
    versions may differ in math on purpose. ``replica`` names the container in the results.
    """
    results: list[SmokeResult] = []
    for model, expectation in zip(loaded.spec.models, loaded.expectations, strict=True):
        targets: list[tuple[str, ModelRef]] = [("default", ModelRef(model.name))]
        targets += [(f"version {v}", ModelRef(model.name, version=v)) for v in expectation.versions]
        targets += [(f"label {k}", ModelRef(model.name, label=k)) for k in sorted(model.labels)]
        for sample in model.samples:
            body = sample_body(sample, loaded.spec_path)
            for target, ref in targets:
                try:
                    answer = rest.predict(
                        ref, body, method=sample.method, signature=sample.signature_name
                    )
                except ServingRequestError as exc:
                    results.append(
                        SmokeResult(
                            model.name, sample.name, target, False, exc.message, replica=replica
                        )
                    )
                    continue
                ok, detail = True, ""
                if target == "default" and sample.expect is not None:
                    ok = matches_expected(answer, sample.expect, sample.tolerance)
                    if not ok:
                        detail = (
                            f"expected {summarize(sample.expect)} (tolerance {sample.tolerance}), "
                            f"got {summarize(answer)}"
                        )
                results.append(
                    SmokeResult(model.name, sample.name, target, ok, detail, answer, replica)
                )
    return results


def raise_for_smoke(results: Sequence[SmokeResult]) -> None:
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    lines = [
        (f"{r.replica}: " if r.replica else "") + f"{r.model} ({r.target}) sample {r.sample}: "
        f"{r.detail}"
        for r in failed
    ]
    raise StackError(
        "smoke requests failed:\n" + "\n".join(f"    {line}" for line in lines),
        service=SERVICE,
        hint="the models are AVAILABLE but answer wrongly: check the SavedModels and the "
        "samples' `expect` in the spec",
    )
