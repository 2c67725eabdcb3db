"""The lifecycle tasks (up, down, status, predict, inspect, logs): option parsing, what they call,
what they print and their exit codes, with the library replaced by fakes (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tasks
from invoke.context import MockContext
from invoke.exceptions import Exit

import tfstack.stack.lifecycle as lifecycle_module
import tfstack.stack.predict as predict_module
from tfstack.errors import StackError
from tfstack.serving.client import ModelRef
from tfstack.stack.lifecycle import UpReport
from tfstack.stack.plan import UpAction, UpPlan
from tfstack.stack.status import StackStatus


def a_status(ok: bool = True) -> StackStatus:
    return StackStatus(
        project="demo",
        spec="config/stack.yaml",
        observed_at="2026-01-01T00:00:00Z",
        endpoints={"rest": "http://127.0.0.1:8501", "grpc": "127.0.0.1:8500"},
        server_error=None if ok else "no serving container is running",
    )


class FakeLifecycle:
    """Stands in for tfstack.stack.lifecycle.Lifecycle; records how the task built and called it."""

    instances: list[FakeLifecycle] = []
    up_error: Exception | None = None

    def __init__(self, spec_path: Path, **kwargs: Any) -> None:
        self.spec_path = spec_path
        self.kwargs = kwargs
        self.calls: list[tuple[str, dict[str, Any]]] = []
        FakeLifecycle.instances.append(self)

    def up(self, **kwargs: Any) -> UpReport:
        self.calls.append(("up", kwargs))
        if FakeLifecycle.up_error is not None:
            raise FakeLifecycle.up_error
        report = UpReport(
            UpPlan(UpAction.RELOAD, ("models, labels or policies changed",)),
            a_status(),
            timings={"validate": 0.1, "reload": 1.2},
            dry_run=kwargs["dry_run"],
        )
        report.sample = (
            "POST http://127.0.0.1:8501/v1/models/m:predict",
            {"instances": [2.0]},
            {"predictions": [3.0]},
        )
        return report

    def down(self, **kwargs: Any) -> list[str]:
        self.calls.append(("down", kwargs))
        return ["container demo-serving-1"]

    def status(self) -> StackStatus:
        self.calls.append(("status", {}))
        return a_status(ok=False)

    def logs(self, **kwargs: Any) -> str:
        self.calls.append(("logs", kwargs))
        return "line 1\nline 2"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeLifecycle]:
    FakeLifecycle.instances = []
    FakeLifecycle.up_error = None
    monkeypatch.setattr(lifecycle_module, "Lifecycle", FakeLifecycle)
    return FakeLifecycle


def test_up_prints_plan_status_endpoints_sample_and_timings(
    fake: type[FakeLifecycle], capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke up` runs Lifecycle.up with the timeout and prints endpoints and a sample."""
    tasks.up(MockContext(), timeout=42.0)
    instance = fake.instances[0]
    assert instance.spec_path.as_posix().endswith("config/stack.yaml")
    assert instance.kwargs["source_root"] == tasks.ROOT
    assert "root" not in instance.kwargs, "the project root comes from the spec's location"
    assert instance.calls == [("up", {"timeout": 42.0, "dry_run": False})]
    out = capsys.readouterr().out
    assert "REST: http://127.0.0.1:8501   gRPC: 127.0.0.1:8500" in out
    assert 'sample: POST http://127.0.0.1:8501/v1/models/m:predict {"instances": [2.0]}' in out
    assert 'answer: {"predictions": [3.0]}' in out
    assert "reload done in 1.3s" in out


def test_up_turns_library_errors_into_exit_codes(fake: type[FakeLifecycle]) -> None:
    """A StackError from up becomes `tfstack: error: ...` with exit code 1, no traceback."""
    fake.up_error = StackError("models not ready", service="serving")
    with pytest.raises(Exit) as caught:
        tasks.up(MockContext())
    assert caught.value.code == 1
    assert "tfstack: error: service serving: models not ready" in str(caught.value.message)


def test_up_dry_run_prints_the_plan_only(
    fake: type[FakeLifecycle], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run prints what up would do and nothing else."""
    tasks.up(MockContext(), dry_run=True)
    assert fake.instances[0].calls == [("up", {"timeout": 180.0, "dry_run": True})]
    assert capsys.readouterr().out == "would reload: models, labels or policies changed\n"


def test_down_passes_volumes_and_lists_removed(
    fake: type[FakeLifecycle], capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke down --volumes` asks for volumes to go too and lists what was removed."""
    tasks.down(MockContext(), volumes=True)
    assert fake.instances[0].calls == [("down", {"volumes": True})]
    assert capsys.readouterr().out == "removed container demo-serving-1\nstack down\n"


def test_status_json_prints_the_document_and_exit_code(
    fake: type[FakeLifecycle], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status --json` prints the schema document; a stack that is not OK exits 1."""
    with pytest.raises(Exit) as caught:
        tasks.status(MockContext(), json_=True)
    assert caught.value.code == 1
    document = json.loads(capsys.readouterr().out)
    assert document["schema_version"] == 1 and document["project"] == "demo"
    assert document["server_error"] == "no serving container is running"


def test_predict_builds_the_model_ref_and_prints_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model/--version/--grpc/--signature/--data/--api-key/--ca-file reach the library call."""
    seen: dict[str, Any] = {}

    def fake_predict(spec_path: Path, ref: ModelRef, body: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(ref=ref, body=body, **kwargs)
        return {"predictions": [2.5]}

    monkeypatch.setattr(predict_module, "predict", fake_predict)
    tasks.predict(
        MockContext(),
        model="m",
        version="2",
        grpc=True,
        signature="sig",
        data='{"instances": [1.0]}',
    )
    assert seen == {
        "ref": ModelRef("m", version=2),
        "body": {"instances": [1.0]},
        "grpc": True,
        "signature": "sig",
        "api_key": None,
        "ca_file": None,
    }
    assert capsys.readouterr().out == '{"predictions": [2.5]}\n'
    seen.clear()
    tasks.predict(MockContext(), model="m", data="{}", api_key="k-123", ca_file="certs/ca.pem")
    assert (seen["api_key"], seen["ca_file"]) == ("k-123", Path("certs/ca.pem"))
    tasks.predict(MockContext(), model="m", label="stable", data='{"instances": [1.0]}')
    assert seen["ref"] == ModelRef("m", label="stable") and seen["signature"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data": "{}"}, "--model and --data are required"),
        ({"model": "m", "data": "{}", "version": "two"}, "--version must be a number"),
        ({"model": "m", "data": "{}", "version": "1", "label": "x"}, "not both"),
        ({"model": "m", "data": "{oops"}, "not valid JSON"),
    ],
)
def test_predict_usage_errors_exit_2(options: dict[str, str], message: str) -> None:
    """Bad predict options are usage errors (exit 2) with a message saying what is wrong."""
    with pytest.raises(Exit) as caught:
        tasks.predict(MockContext(), **options)
    assert caught.value.code == 2
    assert message in str(caught.value.message)


def test_inspect_prints_signatures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke inspect` prints the saved_model_cli-style view of the server's metadata."""
    metadata = {
        "model_spec": {"name": "m", "version": "1"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}]}}
                        },
                        "outputs": {},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }
    monkeypatch.setattr(predict_module, "inspect", lambda spec, model, grpc: metadata)
    tasks.inspect(MockContext(), model="m")
    out = capsys.readouterr().out
    assert "inputs['x'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1)" in out


def test_logs_prints_compose_output(
    fake: type[FakeLifecycle], capsys: pytest.CaptureFixture[str]
) -> None:
    """`invoke logs --tail 0` asks for the whole log and prints it."""
    tasks.logs(MockContext(), tail=0)
    assert fake.instances[0].calls == [("logs", {"follow": False, "tail": None})]
    assert capsys.readouterr().out == "line 1\nline 2\n"
