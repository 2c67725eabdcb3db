"""Unit tests for the pure rollout planning: every case of rollout, promote, rollback and abort."""

from __future__ import annotations

import pytest

from tfstack.docker.compose import ContainerInfo
from tfstack.errors import RolloutError, UsageError
from tfstack.rollout.apply import describe_steps
from tfstack.rollout.journal import Journal, ModelState, StepRecord
from tfstack.rollout.plan import (
    Observed,
    RolloutRequest,
    plan,
    plan_abort,
    plan_rollback,
    previous_from_history,
)
from tfstack.rollout.runner import replicas_of
from tfstack.spec import StackSpec

LATEST = ModelState({"latest": 1}, {"stable": 1})
PINNED_1 = ModelState({"specific": [1]}, {"stable": 1})


def observed(
    state: ModelState = LATEST, served: tuple[int, ...] = (1,), on_disk: tuple[int, ...] = (1,)
) -> Observed:
    return Observed("m", state, served, on_disk)


def request(**kwargs: object) -> RolloutRequest:
    values: dict[str, object] = {"model": "m", "version": 2, "source": "/src/2"}
    values.update(kwargs)
    return RolloutRequest(**values)  # type: ignore[arg-type]


def names(steps: list) -> list[str]:  # type: ignore[type-arg]
    return [s.name for s in steps]


def test_latest_policy_is_pinned_before_the_version_lands_on_disk() -> None:
    """A latest policy is pinned to the served versions first, so the file-system poll cannot load
    the unverified version once it is renamed into place."""
    steps = plan(request(), observed())
    assert names(steps) == ["pin", "stage", "verify", "load", "promote"]
    pin = steps[0]
    assert pin.target == ModelState({"specific": [1]}, {"stable": 1})
    assert pin.wait_available == (1,)


def test_pin_is_skipped_when_the_policy_already_pins_the_served_versions() -> None:
    """No pin step when the spec already pins exactly the served versions."""
    steps = plan(request(), observed(PINNED_1))
    assert names(steps) == ["stage", "verify", "load", "promote"]


def test_specific_policy_naming_the_new_version_is_pinned_without_it() -> None:
    """A policy that already lists N (not yet on disk) must be pinned without N first."""
    state = ModelState({"specific": [1, 2]}, {"stable": 1})
    steps = plan(request(), observed(state))
    assert steps[0].name == "pin"
    assert steps[0].target is not None and steps[0].target.specific == (1,)


def test_load_keeps_labels_and_promote_moves_stable_only_after_load() -> None:
    """The load step serves [stable, N] with labels unchanged; promote then moves stable to N."""
    steps = plan(request(), observed(PINNED_1))
    load, promote = steps[2], steps[3]
    assert load.target == ModelState({"specific": [1, 2]}, {"stable": 1})
    assert 2 in load.wait_available
    assert promote.target == ModelState({"specific": [1, 2]}, {"stable": 2})
    verify = steps[1]
    assert (verify.version, verify.compare_with) == (2, 1)


def test_previous_version_is_kept_by_default_and_retired_on_request() -> None:
    """By default the previous stable stays loaded (instant rollback); keep_previous=False adds a
    drained retire step that unloads it."""
    kept = plan(request(), observed(PINNED_1))
    assert "retire" not in names(kept)
    retired = plan(request(keep_previous=False, drain_s=3.0), observed(PINNED_1))
    retire = retired[-1]
    assert retire.name == "retire"
    assert retire.drain_s == 3.0
    assert retire.target == ModelState({"specific": [2]}, {"stable": 2})


def test_older_versions_beyond_the_previous_one_are_retired() -> None:
    """With [1, 2] served and stable=2, rolling out 3 keeps 2 (previous) and retires 1."""
    state = ModelState({"specific": [1, 2]}, {"stable": 2})
    steps = plan(request(version=3, source="/s"), observed(state, (1, 2), (1, 2)))
    assert names(steps) == ["stage", "verify", "load", "promote", "retire"]
    assert steps[-1].target == ModelState({"specific": [2, 3]}, {"stable": 3})


def test_canary_labels_the_new_version_and_stops() -> None:
    """--canary ends with canary -> N while stable stays on the old version."""
    steps = plan(request(canary=True), observed(PINNED_1))
    assert names(steps)[-1] == "promote"
    assert steps[-1].target == ModelState({"specific": [1, 2]}, {"stable": 1, "canary": 2})


def test_promote_moves_stable_to_the_canary_and_drops_the_label() -> None:
    """--promote: stable -> canary version, canary label removed, previous kept."""
    state = ModelState({"specific": [1, 2]}, {"stable": 1, "canary": 2})
    steps = plan(RolloutRequest("m", promote=True), observed(state, (1, 2), (1, 2)))
    assert names(steps) == ["promote"]
    assert steps[0].target == ModelState({"specific": [1, 2]}, {"stable": 2})
    retiring = plan(
        RolloutRequest("m", promote=True, keep_previous=False), observed(state, (1, 2), (1, 2))
    )
    assert names(retiring) == ["promote", "retire"]


def test_promote_without_a_canary_is_refused() -> None:
    """--promote needs a canary label."""
    with pytest.raises(RolloutError, match="no canary"):
        plan(RolloutRequest("m", promote=True), observed(PINNED_1))


@pytest.mark.parametrize(
    ("req", "obs", "match"),
    [
        (request(version=1), observed(PINNED_1), "already served"),
        (request(version=1), observed(PINNED_1, (1, 5), (1, 5)), "already served"),
        (request(version=3), observed(PINNED_1, (1, 5), (1, 5)), "not higher"),
        (request(source=None), observed(PINNED_1), "no --source"),
        (request(), observed(PINNED_1, (1,), (1, 2)), "already exists"),
        (request(), observed(PINNED_1, (), (1,)), "no AVAILABLE version"),
        (
            request(version=3),
            observed(ModelState({"specific": [1, 2]}, {"stable": 1, "canary": 2}), (1, 2), (1, 2)),
            "canary",
        ),
        (
            request(),
            observed(ModelState({"specific": [1, 5]}, {"stable": 5}), (1,), (1, 5)),
            "does not serve",
        ),
    ],
)
def test_impossible_rollouts_are_refused_with_a_reason(
    req: RolloutRequest, obs: Observed, match: str
) -> None:
    """Served, too low, missing source, existing directory, nothing served, a canary in progress
    and a stable label the server does not serve are each refused before anything changes."""
    with pytest.raises(RolloutError, match=match):
        plan(req, obs)


def test_a_version_is_required() -> None:
    """A rollout without --version is a usage error."""
    with pytest.raises(UsageError):
        plan(RolloutRequest("m"), observed())


def test_rollout_in_place_without_source_is_planned() -> None:
    """Without --source, a version directory already on disk (not served) is adopted."""
    steps = plan(request(source=None), observed(PINNED_1, (1,), (1, 2)))
    assert steps[0].name == "stage" and steps[0].source is None


def test_rollback_with_the_previous_version_loaded_is_one_reload() -> None:
    """stable=2 with 1 still loaded: one reload moves the label to 1 and unloads 2."""
    state = ModelState({"specific": [1, 2]}, {"stable": 2})
    steps = plan_rollback("m", observed(state, (1, 2), (1, 2)), previous=1)
    assert names(steps) == ["rollback"]
    assert steps[0].target == ModelState({"specific": [1]}, {"stable": 1})
    assert steps[0].wait_available == (1,)


def test_rollback_reloads_a_retired_previous_version_first() -> None:
    """A retired previous version is loaded (and AVAILABLE) before the label moves to it."""
    state = ModelState({"specific": [2]}, {"stable": 2})
    steps = plan_rollback("m", observed(state, (2,), (1, 2)), previous=None)
    assert names(steps) == ["reload_previous", "rollback"]
    assert steps[0].target == ModelState({"specific": [1, 2]}, {"stable": 2})
    assert steps[0].wait_available == (1,)
    assert steps[1].target == ModelState({"specific": [1]}, {"stable": 1})


def test_rollback_of_a_canary_drops_the_label_and_its_version() -> None:
    """During a canary, rollback removes the canary label and unloads the canary version."""
    state = ModelState({"specific": [1, 2]}, {"stable": 1, "canary": 2})
    steps = plan_rollback("m", observed(state, (1, 2), (1, 2)), previous=None)
    assert steps[0].target == ModelState({"specific": [1]}, {"stable": 1})


def test_rollback_without_an_older_version_is_refused() -> None:
    """Nothing older on disk: nothing to roll back to."""
    with pytest.raises(RolloutError, match="no version older"):
        plan_rollback("m", observed(PINNED_1), previous=None)


def test_previous_comes_from_the_latest_history_entry() -> None:
    """The history says which version was stable before the current one."""
    history = [
        {"version": 2, "previous": 1},
        {"version": 3, "previous": 2},
        {"version": 2, "previous": 7},
    ]
    assert previous_from_history(history, 2) == 7
    assert previous_from_history(history, 3) == 2
    assert previous_from_history(history, 9) is None


def _journal(statuses: dict[str, str], created: bool) -> Journal:
    steps = plan(request(), observed())
    records = [StepRecord(s, statuses.get(s.name, "pending")) for s in steps]  # type: ignore[arg-type]
    return Journal(
        project="p",
        model="m",
        action="rollout",
        version=2,
        original=LATEST,
        original_spec_text="text",
        original_served=(1,),
        previous_stable=1,
        steps=records,
        created_version_dir=created,
    )


def test_abort_after_load_unloads_then_removes_the_directory_then_restores_the_spec() -> None:
    """Order matters: N is unloaded from the pinned config before its directory goes, and only
    then is the original (maybe latest) policy restored."""
    journal = _journal({"pin": "done", "stage": "done", "verify": "done", "load": "running"}, True)
    steps = plan_abort(journal)
    assert names(steps) == ["unload", "remove_version", "restore"]
    assert steps[0].target == ModelState({"specific": [1]}, {"stable": 1})
    assert steps[2].restore_original and steps[2].target == LATEST


def test_abort_during_verify_removes_the_directory_and_restores_the_pin() -> None:
    """Before load, nothing to unload: remove the staged version and restore the spec."""
    journal = _journal({"pin": "done", "stage": "done", "verify": "failed"}, True)
    assert names(plan_abort(journal)) == ["remove_version", "restore"]


def test_abort_before_anything_changed_does_nothing() -> None:
    """A journal whose first step never started needs no undo."""
    assert plan_abort(_journal({}, False)) == []


def test_dry_run_text_shows_every_config_transition() -> None:
    """--dry-run lists each step and, for transitions, the config before and after."""
    text = "\n".join(describe_steps(plan(request(), observed()), LATEST))
    assert "latest 1; labels stable=1" in text
    assert "->  specific [1]; labels stable=1" in text
    assert "->  specific [1, 2]; labels stable=2" in text


def test_each_replica_is_reached_through_its_own_published_ports() -> None:
    """With replicas, every running serving container is reloaded on the host ports Compose
    published for it; without containers the spec's ports are used."""

    spec = StackSpec.model_validate(
        {
            "project": "p",
            "models": [{"name": "m"}],
            "serving": {"grpc_port": 9000, "rest_port": 9100, "replicas": 2},
        }
    )

    def container(name: str, grpc: str, rest: str, state: str = "running") -> ContainerInfo:
        return ContainerInfo(
            id=name,
            name=name,
            service="serving",
            state=state,
            health=None,
            exit_code=None,
            started_at="",
            image_id="",
            config_hash="",
            ports={"9000/tcp": [("127.0.0.1", grpc)], "9100/tcp": [("127.0.0.1", rest)]},
        )

    replicas = replicas_of(
        spec,
        [
            container("s-1", "9001", "9101"),
            container("s-2", "9000", "9100"),
            container("s-3", "9002", "9102", "exited"),
        ],
    )
    assert [(r.name, r.grpc_target, r.rest_url) for r in replicas] == [
        ("s-1", "127.0.0.1:9001", "http://127.0.0.1:9101"),
        ("s-2", "127.0.0.1:9000", "http://127.0.0.1:9100"),
    ]
    (fallback,) = replicas_of(spec, [])
    assert fallback.grpc_target == "127.0.0.1:9000"
