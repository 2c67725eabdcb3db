"""Model manager: version discovery, policies, states, transitions, labels, full-replace reload."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorflow_serving.config import model_server_config_pb2

from modelserver import manager as manager_module
from modelserver.errors import Code, ServingError
from modelserver.manager import (
    ManagerOptions,
    ModelManager,
    State,
    aspired_versions,
    parse_version,
    versions_on_disk,
)
from modelserver.servable import SessionOptions, load_servable

from .conftest import ModelFiles


def model_config(name: str, base: Path, policy: str = "", **labels: int) -> Any:
    config = model_server_config_pb2.ModelConfig(
        name=name, base_path=str(base), model_platform="tensorflow"
    )
    if policy == "all":
        config.model_version_policy.all.SetInParent()
    elif policy.startswith("latest"):
        config.model_version_policy.latest.num_versions = int(policy.split(":")[1])
    elif policy.startswith("specific"):
        config.model_version_policy.specific.versions.extend(
            int(v) for v in policy.split(":")[1].split(",")
        )
    for label, version in labels.items():
        config.version_labels[label] = version
    return config


def loader(name: str, version: int, path: str) -> Any:
    return load_servable(name, version, path, SessionOptions())


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ModelManager]]:
    made: list[ModelManager] = []

    def make(**options: Any) -> ModelManager:
        settings = {"file_system_poll_wait_seconds": 0, "max_num_load_retries": 0, **options}
        manager = ModelManager(ManagerOptions(**settings), loader)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop()


def states(manager: ModelManager, name: str) -> dict[int, str]:
    return {r.version: r.state.name for r in manager.status(name)}


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_version_directory_names() -> None:
    """Only all-digit names are versions, parsed as int64; leading zeros are allowed."""
    assert parse_version("00000123") == 123
    assert parse_version("7") == 7
    for name in ("v1", "1.5", "-3", "", "1a", str(1 << 63), "١٢"):
        assert parse_version(name) is None


def test_versions_on_disk_ignores_files_and_other_names(tmp_path: Path) -> None:
    """Numeric child directories are versions; files and non-numeric directories are ignored."""
    for name in ("1", "0010", "tmp-3", ".staging-4"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("not a directory")
    assert versions_on_disk(str(tmp_path)) == [1, 10]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("", {9}), ("latest:2", {5, 9}), ("all", {1, 5, 9}), ("specific:1,4,5", {1, 5})],
)
def test_version_policies(policy: str, expected: set[int]) -> None:
    """latest N (default 1), all and specific select from the versions on disk."""
    assert aspired_versions(model_config("m", Path("/m"), policy), [1, 5, 9]) == expected


def test_new_version_available_before_old_unloads(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """A new version turns AVAILABLE first; the old one then unloads; removal from disk unloads."""
    models.place(tmp_path, 1)
    manager = make_manager()
    manager.apply_config([model_config("m", tmp_path)])
    assert states(manager, "m") == {1: "AVAILABLE"}
    models.place(tmp_path, 2, "v2")
    manager.poll()
    wait_for(lambda: states(manager, "m") == {2: "AVAILABLE", 1: "END"})
    assert manager.resolve("m").version == 2
    shutil.rmtree(tmp_path / "2")  # rollback: version 1 is the latest on disk again
    manager.poll()
    wait_for(lambda: states(manager, "m") == {2: "END", 1: "AVAILABLE"})
    assert manager.resolve("m").version == 1
    shutil.rmtree(tmp_path / "1")
    manager.poll()
    wait_for(lambda: states(manager, "m") == {2: "END", 1: "END"})
    with pytest.raises(ServingError) as caught:
        manager.resolve("m")
    assert caught.value.message == "Servable not found for request: Latest(m)"


def test_corrupt_new_version_keeps_old_one_serving(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """A version that fails to load ends with an error status and never takes traffic."""
    models.place(tmp_path, 1)
    manager = make_manager()
    manager.apply_config([model_config("m", tmp_path)])
    models.place(tmp_path, 2, "corrupt")
    manager.poll()
    wait_for(lambda: states(manager, "m")[2] == "END")
    record = manager.status("m", 2)[0]
    assert record.error is not None and record.error.code != Code.OK
    assert states(manager, "m")[1] == "AVAILABLE"
    assert manager.resolve("m").version == 1


def test_startup_failure_reports_the_failed_version(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """apply_config raises when a new model's versions all fail (the server exits on it)."""
    models.place(tmp_path, 3, "corrupt")
    manager = make_manager()
    with pytest.raises(ServingError) as caught:
        manager.apply_config([model_config("m", tmp_path)])
    assert "{name: m version: 3}" in caught.value.message
    assert "did not become available" in caught.value.message


def test_missing_saved_model_is_not_found(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """An empty version directory fails with upstream's NOT_FOUND text."""
    (tmp_path / "1").mkdir()
    manager = make_manager()
    with pytest.raises(ServingError):
        manager.apply_config([model_config("m", tmp_path)])
    error = manager.status("m", 1)[0].error
    assert error is not None and error.code == Code.NOT_FOUND
    assert "Could not find SavedModel .pb or .pbtxt" in error.message


def test_retries_follow_the_flags(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """A failing load is retried max_num_load_retries times before the version ends in error."""
    (tmp_path / "1").mkdir()
    calls: list[int] = []

    def failing(name: str, version: int, path: str) -> Any:
        calls.append(version)
        raise ServingError(Code.UNAVAILABLE, "flaky storage")

    manager = ModelManager(
        ManagerOptions(
            file_system_poll_wait_seconds=0, max_num_load_retries=2, load_retry_interval_micros=1000
        ),
        failing,
    )
    try:
        with pytest.raises(ServingError):
            manager.apply_config([model_config("m", tmp_path)])
        assert calls == [1, 1, 1]
    finally:
        manager.stop()


def test_labels_on_unavailable_versions_are_refused(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """Without the flag a label may only name an AVAILABLE version, before anything loads."""
    models.place(tmp_path, 1)
    manager = make_manager()
    with pytest.raises(ServingError) as caught:
        manager.apply_config([model_config("m", tmp_path, stable=1)])
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert caught.value.message == (
        "Request to assign label to version 1 of model m, which is not currently available for "
        "inference"
    )
    assert manager.model_names() == []
    manager.apply_config([model_config("m", tmp_path)])
    manager.apply_config([model_config("m", tmp_path, stable=1)])
    assert manager.resolve("m", label="stable").version == 1


def test_lenient_labels_still_cannot_move_to_unavailable(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """--allow_version_labels_for_unavailable_models allows new labels, not moving existing ones."""
    models.place(tmp_path, 1)
    manager = make_manager(allow_version_labels_for_unavailable_models=True)
    manager.apply_config([model_config("m", tmp_path, "specific:1,2", stable=1, canary=2)])
    assert manager.resolve("m", label="stable").version == 1
    with pytest.raises(ServingError) as caught:
        manager.resolve("m", label="canary")
    assert caught.value.message == "Servable not found for request: Specific(m, 2)"
    with pytest.raises(ServingError) as caught:
        manager.apply_config([model_config("m", tmp_path, "specific:1,2", stable=2)])
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert manager.resolve("m", label="stable").version == 1


def test_label_rollout_two_steps(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """Serve N and N+1 with the label on N, then move it once N+1 is AVAILABLE; roll back too."""
    models.place(tmp_path, 1)
    models.place(tmp_path, 2, "v2")
    manager = make_manager()
    manager.apply_config([model_config("m", tmp_path, "specific:1,2")])
    manager.apply_config([model_config("m", tmp_path, "specific:1,2", stable=1)])
    manager.apply_config([model_config("m", tmp_path, "specific:1,2", stable=2)])
    assert manager.resolve("m", label="stable").version == 2
    manager.apply_config([model_config("m", tmp_path, "specific:1,2", stable=1)])
    assert manager.resolve("m", label="stable").version == 1


def test_reload_replaces_the_whole_config(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """Models missing from a reload are unloaded; new ones are AVAILABLE when it returns."""
    models.place(tmp_path / "a", 1)
    models.place(tmp_path / "b", 1)
    manager = make_manager()
    manager.apply_config([model_config("a", tmp_path / "a")])
    manager.apply_config([model_config("b", tmp_path / "b")])
    assert states(manager, "b") == {1: "AVAILABLE"}
    wait_for(lambda: states(manager, "a") == {1: "END"})
    assert manager.model_names() == ["b"]
    with pytest.raises(ServingError):
        manager.resolve("a")


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"name": "m", "base_path": "relative/path"}, "to have an absolute path or URI"),
        ({"name": "m", "model_platform": ""}, "model_platform"),
        ({"name": "m", "model_platform": "pytorch"}, "unsupported platform"),
    ],
)
def test_invalid_configs_are_refused(
    tmp_path: Path, make_manager: Callable[..., ModelManager], change: dict[str, str], text: str
) -> None:
    """Relative base paths and missing or foreign platforms are INVALID_ARGUMENT."""
    config = model_config("m", tmp_path)
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ServingError) as caught:
        make_manager().apply_config([config])
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert text in caught.value.message


def test_duplicate_names_are_refused(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """Model names must be unique in a config."""
    with pytest.raises(ServingError) as caught:
        make_manager().apply_config([model_config("m", tmp_path), model_config("m", tmp_path)])
    assert caught.value.message == "Illegal to list model m multiple times in config list"


def test_poller_picks_up_new_and_removed_versions(
    models: ModelFiles, tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    """With a poll interval the manager finds a new version and unloads a removed one by itself."""
    models.place(tmp_path, 1)
    manager = make_manager(file_system_poll_wait_seconds=0.2)
    manager.apply_config([model_config("m", tmp_path)])
    manager.start()
    models.place(tmp_path, 2, "v2")
    wait_for(lambda: states(manager, "m") == {2: "AVAILABLE", 1: "END"})
    shutil.rmtree(tmp_path / "2")
    wait_for(lambda: states(manager, "m") == {2: "END", 1: "AVAILABLE"})
    assert [r.state for r in manager.status("m")] == [State.END, State.AVAILABLE]


def answers_within(call: Callable[[], object], seconds: float) -> bool:
    """Whether ``call`` returns within ``seconds`` when run on another thread."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_state_callbacks_run_after_the_lock_is_released(models: ModelFiles, tmp_path: Path) -> None:
    """Every state callback runs while other threads can use the manager (status answers)."""
    models.place(tmp_path, 1)
    holder: list[ModelManager] = []
    answered: list[tuple[State, bool]] = []

    def on_event(
        kind: str, name: str, version: int, state: State, error: ServingError | None
    ) -> None:
        if kind == "state":
            answered.append((state, answers_within(holder[0].snapshot, 2.0)))

    manager = ModelManager(
        ManagerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0),
        loader,
        on_event=on_event,
    )
    holder.append(manager)
    try:
        manager.apply_config([model_config("m", tmp_path)])
        models.place(tmp_path, 2, "v2")
        manager.poll()
        wait_for(lambda: (State.END, True) in answered or (State.END, False) in answered)
    finally:
        manager.stop()
    assert [state for state, _ in answered] == [
        State.START,
        State.LOADING,
        State.AVAILABLE,
        State.START,
        State.LOADING,
        State.AVAILABLE,
        State.UNLOADING,
        State.END,
    ]
    assert all(ok for _, ok in answered), answered


def test_base_paths_are_listed_outside_the_lock(
    models: ModelFiles,
    tmp_path: Path,
    make_manager: Callable[..., ModelManager],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a poll lists a slow base path, status and routing still answer."""
    models.place(tmp_path, 1)
    manager = make_manager()
    manager.apply_config([model_config("m", tmp_path)])
    listing = threading.Event()
    release = threading.Event()
    list_directories = manager_module.version_directories

    def slow_listing(base_path: str) -> dict[int, str]:
        listing.set()
        release.wait(10)
        return list_directories(base_path)

    monkeypatch.setattr(manager_module, "version_directories", slow_listing)
    poller = threading.Thread(target=manager.poll, daemon=True)
    poller.start()
    try:
        assert listing.wait(10)
        assert answers_within(lambda: manager.status("m"), 2.0)
        assert answers_within(manager.model_names, 2.0)
    finally:
        release.set()
        poller.join(10)
    assert states(manager, "m") == {1: "AVAILABLE"}
