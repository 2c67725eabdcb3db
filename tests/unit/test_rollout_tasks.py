"""The rollout and rollback tasks: option parsing, the request they build, what they print and
their exit codes, with the library replaced by fakes (no Docker)."""

from __future__ import annotations

from typing import Any

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

import tfstack.rollout as rollout_module
from tfstack.errors import RolloutError
from tfstack.rollout.journal import Journal, ModelState
from tfstack.rollout.plan import RolloutRequest
from tfstack.rollout.run import Outcome


def outcome(dry_run: bool = False) -> Outcome:
    journal = Journal(
        project="p",
        model="m",
        action="rollout",
        version=2,
        original=ModelState({"latest": 1}, {}),
        original_spec_text="",
        original_served=(1,),
        previous_stable=1,
        steps=[],
    )
    return Outcome(journal, {}, "m version 2 is stable: specific [1, 2]", dry_run=dry_run)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, dict[str, Any]]]:
    recorded: list[tuple[str, Any, dict[str, Any]]] = []

    def fake_rollout(context: Any, request: RolloutRequest, **kwargs: Any) -> Outcome:
        recorded.append(("rollout", (context, request), kwargs))
        if request.version == 99:
            raise RolloutError("verify failed", model="m", version=99, step="verify")
        return outcome(kwargs.get("dry_run", False))

    def fake_rollback(context: Any, **kwargs: Any) -> Outcome:
        recorded.append(("rollback", context, kwargs))
        return outcome(kwargs.get("dry_run", False))

    monkeypatch.setattr(rollout_module, "run_rollout", fake_rollout)
    monkeypatch.setattr(rollout_module, "run_rollback", fake_rollback)
    return recorded


def test_rollout_builds_the_request_from_the_options(
    calls: list[tuple[str, Any, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every option reaches the request; the source is made absolute; the summary is printed."""
    tasks.rollout(
        MockContext(),
        model="m",
        version=2,
        source="relative/dir",
        canary=True,
        allow_signature_change=True,
        retire_previous=True,
        drain=5.0,
        latency_factor=1.5,
    )
    name, (context, request), kwargs = calls[0]
    assert name == "rollout"
    assert request.model == "m" and request.version == 2 and request.canary
    assert request.source is not None and request.source.startswith("/")
    assert request.allow_signature_change and not request.keep_previous
    assert (request.drain_s, request.latency_factor) == (5.0, 1.5)
    assert kwargs == {"dry_run": False, "resume": False, "abort": False}
    assert context.model == "m" and context.spec_path.name == "stack.yaml"
    assert "m version 2 is stable" in capsys.readouterr().out


def test_rollout_requires_model_and_version(calls: list[tuple[str, Any, dict[str, Any]]]) -> None:
    """Missing --model, or --version without --promote/--resume/--abort, exits 2."""
    with pytest.raises(Exit) as no_model:
        tasks.rollout(MockContext(), version=2)
    assert no_model.value.code == 2
    with pytest.raises(Exit) as no_version:
        tasks.rollout(MockContext(), model="m")
    assert no_version.value.code == 2
    tasks.rollout(MockContext(), model="m", resume=True)
    assert calls[-1][2]["resume"] is True
    assert calls[-1][1][1].version is None


def test_a_failed_rollout_exits_1_with_the_message(
    calls: list[tuple[str, Any, dict[str, Any]]],
) -> None:
    """A RolloutError becomes `tfstack: error: ...` and exit code 1."""
    with pytest.raises(Exit) as caught:
        tasks.rollout(MockContext(), model="m", version=99, source="/x")
    assert caught.value.code == 1
    assert "step verify" in str(caught.value.message)


def test_dry_run_prints_no_summary(
    calls: list[tuple[str, Any, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run passes through and prints only the plan (written by the library)."""
    tasks.rollout(MockContext(), model="m", version=2, source="/x", dry_run=True)
    assert calls[0][2]["dry_run"] is True
    assert capsys.readouterr().out == ""


def test_rollback_task(
    calls: list[tuple[str, Any, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """rollback needs --model and prints the summary."""
    with pytest.raises(Exit):
        tasks.rollback(MockContext())
    tasks.rollback(MockContext(), model="m")
    assert calls[-1][0] == "rollback" and calls[-1][1].model == "m"
    assert "stable" in capsys.readouterr().out
