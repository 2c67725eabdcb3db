"""The temporary serving container's pure parts: plan, model folders, readiness and its wait."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tfstack.core.modelstatus import VersionState, parse_version_status
from tfstack.docker.containers import (
    BATCHING_CONFIG_PATH,
    MODEL_CONFIG_PATH,
    ModelsAvailable,
    assess_models,
    check_model_dir,
    config_model_names,
    plan_serving,
)
from tfstack.errors import StackError, UsageError


def make_model(base: Path, *versions: int) -> Path:
    for version in versions:
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"")
    return base


def test_models_mapping_mounts_read_only_and_expects_the_latest_version(tmp_path: Path) -> None:
    """Each model is mounted under /models/<name> and the wait expects the highest version."""
    model = make_model(tmp_path / "m", 1, 3)
    plan = plan_serving("img", models={"m": model})
    assert plan.mounts == {str(model.resolve()): "/models/m"}
    assert plan.expected == {"m": (3,)}
    assert f"--model_config_file={MODEL_CONFIG_PATH}" in plan.command
    assert '"/models/m"' in plan.files[MODEL_CONFIG_PATH]
    assert plan.labels["org.tfstack.managed"] == "true"


def test_batching_and_extra_flags_come_last(tmp_path: Path) -> None:
    """Batching text becomes a file plus flags; extra flags follow so they override defaults."""
    model = make_model(tmp_path / "m", 1)
    plan = plan_serving(
        "img", models={"m": model}, batching="max_batch_size { value: 8 }", flags=["--port=9"]
    )
    assert plan.files[BATCHING_CONFIG_PATH] == "max_batch_size { value: 8 }"
    assert "--enable_batching=true" in plan.command
    assert plan.command[-1] == "--port=9"


def test_model_config_text_names_the_models_and_takes_expected_versions(tmp_path: Path) -> None:
    """A models.config replaces the generated one; expected_versions pins the waited versions."""
    config = 'model_config_list { config { name: "a" base_path: "/models/a" } }'
    plan = plan_serving(
        "img",
        models={"a": make_model(tmp_path / "a", 1, 2)},
        model_config=config,
        expected_versions={"a": [2, 1]},
    )
    assert plan.files[MODEL_CONFIG_PATH] == config
    assert plan.expected == {"a": (1, 2)}
    assert config_model_names("config { name: 'x' } config { name: \"y\" }") == ["x", "y"]


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no SavedModel"),
        ("savedmodel", "is a SavedModel itself"),
        ("file", "is a file"),
    ],
)
def test_a_folder_without_a_saved_model_is_refused_naming_the_path(
    tmp_path: Path, layout: str, needle: str
) -> None:
    """Bad model paths fail before any container, naming the path and what to do."""
    base = tmp_path / "model"
    if layout == "empty":
        (base / "notes").mkdir(parents=True)
    elif layout == "savedmodel":
        base.mkdir()
        (base / "saved_model.pb").write_bytes(b"")
    elif layout == "file":
        base.write_text("x")
    with pytest.raises(UsageError) as caught:
        check_model_dir("m", base)
    assert needle in caught.value.message
    assert str(base) in caught.value.message
    assert caught.value.hint


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    """No models, an unknown expected model or a foreign label namespace are refused."""
    with pytest.raises(UsageError, match="needs models"):
        plan_serving("img")
    model = make_model(tmp_path / "m", 1)
    with pytest.raises(UsageError, match="not served"):
        plan_serving("img", models={"m": model}, expected_versions={"other": [1]})
    with pytest.raises(UsageError, match=r"org\.tfstack"):
        plan_serving("img", models={"m": model}, labels={"team": "x"})


def test_model_status_json_is_parsed() -> None:
    """The REST status document becomes version states with their errors."""
    status_field = {"error_code": "NOT_FOUND", "error_message": "x"}
    document = {"model_version_status": [{"version": "2", "state": "END", "status": status_field}]}
    (status,) = parse_version_status(document)
    assert status == VersionState(2, "END", "NOT_FOUND", "x")
    assert status.failed and not status.available


def test_readiness_needs_every_expected_version_available() -> None:
    """Ready only when each expected version is AVAILABLE; '()' means all reported versions."""
    loading = [VersionState(1, "AVAILABLE"), VersionState(2, "LOADING")]
    assert not assess_models({"m": (1, 2)}, {"m": loading}).ready
    assert assess_models({"m": (1,)}, {"m": loading}).ready
    assert not assess_models({"m": ()}, {"m": loading}).ready
    assert not assess_models({"m": ()}, {"m": []}).ready
    verdict = assess_models({"m": (1,)}, {"m": "Could not find any versions"})
    assert not verdict.ready and "Could not find" in verdict.seen[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_times_out_saying_what_it_last_saw_and_the_log_tail() -> None:
    """A timeout names the last states and carries the server's log lines; it never sleeps."""
    clock = FakeClock()
    wait = ModelsAvailable({"m": (1,)}, timeout=2, interval=0.5, clock=clock, sleep=clock.sleep)
    with pytest.raises(StackError) as caught:
        wait.wait(
            lambda model: [VersionState(1, "LOADING")],
            exited=lambda: None,
            log_tail=lambda: ["loading servable m"],
        )
    assert "v1 LOADING" in caught.value.message
    assert caught.value.log_tail == ["loading servable m"]


def test_wait_fails_fast_on_a_failed_version_or_an_exited_server() -> None:
    """An END-with-error version or an exited server fails at once, not at the timeout."""
    clock = FakeClock()
    wait = ModelsAvailable({"m": (1,)}, timeout=60, clock=clock, sleep=clock.sleep)
    failed = [VersionState(1, "END", "NOT_FOUND", "no variables")]
    with pytest.raises(StackError, match="no variables"):
        wait.wait(lambda model: failed, exited=lambda: None, log_tail=list)
    with pytest.raises(StackError, match="exited with code 1"):
        wait.wait(lambda model: "starting", exited=lambda: "exited with code 1", log_tail=list)
    assert clock.now == 0.0


def test_wait_rides_out_connection_errors_until_ready() -> None:
    """Connection refused while the server starts counts as 'not yet'."""
    clock = FakeClock()
    answers: list[object] = [requests.ConnectionError(), [VersionState(1, "AVAILABLE")]]

    def fetch(model: str) -> list[VersionState] | str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    wait = ModelsAvailable({"m": (1,)}, timeout=10, interval=1, clock=clock, sleep=clock.sleep)
    assert wait.wait(fetch, exited=lambda: None, log_tail=list) == 1.0
