"""The public test kit without Docker: image choice, bad input, calls, cleanup and the plugin."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tfstack.errors import UsageError
from tfstack.testing import DEFAULT_IMAGE, IMAGE_ENV, ServingCalls, serving_image
from tfstack.testing.cleanup import (
    LABEL_OWNER,
    SESSION_ID,
    owner_alive,
    remove_session,
    remove_stale,
    session_labels,
)
from tfstack.testing.container import TFServingContainer

pytest_plugins = ["pytester"]


def test_image_env_overrides_the_argument_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """$TFSTACK_SERVING_IMAGE wins; else the argument; else tfstack's runtime image."""
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    assert serving_image() == DEFAULT_IMAGE
    assert serving_image("tensorflow/serving:2.19.0") == "tensorflow/serving:2.19.0"
    monkeypatch.setenv(IMAGE_ENV, "mine:1")
    assert serving_image("tensorflow/serving:2.19.0") == "mine:1"


def test_a_folder_without_a_saved_model_fails_before_any_container(tmp_path: Path) -> None:
    """Bad models input is a UsageError naming the path, raised before Docker is contacted."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as caught:
        TFServingContainer("never-pulled:0", models={"m": tmp_path / "empty"})
    assert str(tmp_path / "empty") in caught.value.message
    assert "SavedModel" in caught.value.message
    assert caught.value.hint


class FakeRest:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def predict(
        self, ref: Any, body: Any, *, method: str = "predict", signature: Any = None
    ) -> Any:
        self.calls.append((ref, body, method, signature))
        if method == "predict":
            return {"predictions": [1]} if "instances" in body else {"outputs": {"y": [1]}}
        return {"results": [[["a", 0.5]]]}

    def metadata(self, ref: Any) -> Any:
        return {"model_spec": {"name": ref.name}}


class FakeCalls(ServingCalls):
    def __init__(self) -> None:
        self.fake = FakeRest()

    @property
    def rest(self) -> Any:
        return self.fake


def test_calls_build_rest_bodies_and_unwrap_answers() -> None:
    """predict/classify/regress/metadata send the TF Serving bodies and return the payloads."""
    calls = FakeCalls()
    assert calls.predict("m", [1.0], version=2) == [1]
    assert calls.predict("m", inputs={"x": [1.0]}) == {"y": [1]}
    assert calls.classify("m", [{"x": 1.0}], context={"c": 1}) == [[["a", 0.5]]]
    assert calls.regress("m", [{"x": 1.0}]) == [[["a", 0.5]]]
    assert calls.metadata("m") == {"model_spec": {"name": "m"}}
    ref, body, method, _ = calls.fake.calls[0]
    assert (ref.version, body, method) == (2, {"instances": [1.0]}, "predict")
    assert calls.fake.calls[2][1:3] == ({"examples": [{"x": 1.0}], "context": {"c": 1}}, "classify")
    assert calls.fake.calls[3][2] == "regress"
    with pytest.raises(TypeError, match="exactly one"):
        calls.predict("m")


class FakeContainer:
    def __init__(self, name: str, labels: dict[str, str]) -> None:
        self.name = name
        self.labels = labels
        self.removed = False

    def remove(self, force: bool) -> None:
        self.removed = True


def test_sweeps_remove_this_session_and_containers_of_dead_owners() -> None:
    """Session cleanup selects by label; the stale sweep removes only dead owners' containers."""
    mine = FakeContainer("mine", session_labels())
    host = session_labels()[LABEL_OWNER].rpartition(":")[0]
    dead = FakeContainer("dead", {LABEL_OWNER: f"{host}:999999999"})
    other_host = FakeContainer("elsewhere", {LABEL_OWNER: "some-other-host:1"})
    seen_filters: list[Any] = []

    def listing(all: bool, filters: Any) -> list[FakeContainer]:
        seen_filters.append(filters)
        return [mine, dead, other_host]

    client = SimpleNamespace(containers=SimpleNamespace(list=listing))
    assert remove_stale(client) == ["dead"]
    assert not other_host.removed and not mine.removed
    remove_session(client, SESSION_ID)
    assert f"org.tfstack.session={SESSION_ID}" in seen_filters[-1]["label"]
    assert not owner_alive("myhost:999999999", host="myhost")


def test_plugin_fixtures_are_not_autouse_and_need_configuration(
    pytester: pytest.Pytester,
) -> None:
    """A plain test runs untouched; tfserving without models fails with a usage message."""
    pytester.makepyfile(
        """
        def test_plain():
            assert True

        def test_unconfigured(tfserving):
            pass
        """
    )
    result = pytester.runpytest()  # the plugin loads through its pytest11 entry point
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*has no models to serve*"])
