"""Unit tests for staging: SavedModel and signature checks, atomic placement, Keras export.

These write small SavedModels with TensorFlow (no Docker)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tfstack.errors import RolloutError
from tfstack.models.demo import write_half_plus
from tfstack.rollout.staging import (
    STAGING_PREFIX,
    Signature,
    TensorInfo,
    clean_leftovers,
    read_signatures,
    remove_version_dir,
    shapes_compatible,
    signature_problems,
    stage_version,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1 (half_plus_two), a compatible candidate (+3) and an incompatible one (input z int64)."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    base = tmp_path_factory.mktemp("staging-models")
    write_half_plus(base / "v1", offset=2.0, offset2=3.0, model_name="m")
    write_half_plus(base / "good", offset=3.0, offset2=4.0, model_name="m")
    module = tf.Module()

    def serve(z: Any) -> dict[str, Any]:
        return {"y": tf.cast(z, tf.float32) * 2.0}

    function = tf.function(serve, input_signature=[tf.TensorSpec([None], tf.int64, name="z")])
    tf.saved_model.save(module, str(base / "bad"), signatures={"serving_default": function})
    return {"v1": base / "v1", "good": base / "good", "bad": base / "bad"}


@pytest.fixture
def model_dir(tmp_path: Path, models: dict[str, Path]) -> Path:
    target = tmp_path / "m"
    target.mkdir()
    shutil.copytree(models["v1"], target / "1")
    return target


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def t(dtype: str, *shape: int) -> TensorInfo:
    return TensorInfo(dtype, tuple(shape))


def test_shapes_agree_where_both_are_known() -> None:
    """-1 and unknown rank match anything; known sizes and ranks must agree."""
    assert shapes_compatible((-1,), (5,))
    assert shapes_compatible(None, (1, 2))
    assert not shapes_compatible((-1,), (-1, 1))
    assert not shapes_compatible((3,), (4,))


def test_signature_problems_name_every_incompatibility() -> None:
    """Removed signatures, renamed inputs, changed dtypes and shapes are each reported; an added
    signature is fine."""
    old = {
        "serving_default": Signature("predict", {"x": t("DT_FLOAT", -1)}, {"y": t("DT_FLOAT", -1)}),
        "other": Signature("predict", {}, {}),
    }
    same = dict(old) | {"new": Signature("predict")}
    assert signature_problems(old, same) == []
    changed = {
        "serving_default": Signature(
            "classify", {"x": t("DT_INT64", -1)}, {"y": t("DT_FLOAT", -1, 2)}
        )
    }
    problems = "\n".join(signature_problems(old, changed))
    assert "'other' is gone" in problems
    assert "method 'predict' became 'classify'" in problems
    assert "input 'x' dtype DT_FLOAT became DT_INT64" in problems
    assert "output 'y' shape" in problems
    renamed = {
        "serving_default": Signature(
            "predict", {"z": t("DT_FLOAT", -1)}, old["serving_default"].outputs
        ),
        "other": old["other"],
    }
    assert "input names differ" in "\n".join(signature_problems(old, renamed))


def test_signatures_are_read_from_saved_model_pb(models: dict[str, Path]) -> None:
    """The serve meta graph's signatures, with dtypes and shapes."""
    signatures = read_signatures(models["v1"])
    assert {"serving_default", "regress_x_to_y", "classify_x_to_y"} <= set(signatures)
    assert signatures["serving_default"].inputs["x"] == TensorInfo("DT_FLOAT", (-1,))


def test_a_compatible_version_is_copied_checked_and_renamed(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """The candidate lands as <N> in one rename, readable by the server's non-root user, with no
    staging leftovers."""
    result = stage_version(
        models["good"], model_dir, 2, current=1, allow_signature_change=False, model="m"
    )
    assert result.version_dir == model_dir / "2"
    assert listing(model_dir) == ["1", "2"]
    assert (model_dir / "2" / "saved_model.pb").stat().st_mode & 0o004
    assert os.stat(model_dir / "2" / "variables").st_mode & 0o005 == 0o005


def test_the_journal_hook_runs_just_before_the_rename(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """before_rename sees the staged directory under its dot-name and no <N> yet."""
    seen: list[list[str]] = []
    stage_version(
        models["good"],
        model_dir,
        2,
        current=1,
        allow_signature_change=False,
        model="m",
        before_rename=lambda: seen.append(listing(model_dir)),
    )
    assert len(seen) == 1
    assert "2" not in seen[0]
    assert any(name.startswith(STAGING_PREFIX) for name in seen[0])


def test_an_incompatible_signature_is_refused_and_nothing_is_left(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """Clients would break: the stage step fails with the differences, no <N> and no dot-dir."""
    with pytest.raises(RolloutError) as caught:
        stage_version(
            models["bad"], model_dir, 2, current=1, allow_signature_change=False, model="m"
        )
    assert caught.value.step == "stage"
    evidence = "\n".join(caught.value.evidence)
    assert "input names differ" in evidence
    assert "'regress_x_to_y' is gone" in evidence
    assert listing(model_dir) == ["1"]


def test_allow_signature_change_accepts_with_warnings(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """--allow-signature-change stages the version and reports what changed."""
    result = stage_version(
        models["bad"], model_dir, 2, current=1, allow_signature_change=True, model="m"
    )
    assert listing(model_dir) == ["1", "2"]
    assert any("input names differ" in w for w in result.warnings)


def test_a_garbage_saved_model_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """A saved_model.pb that does not parse never gets a numbered name."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    with pytest.raises(RolloutError, match=r"does not parse|no meta graph"):
        stage_version(broken, model_dir, 2, current=1, allow_signature_change=False, model="m")
    assert listing(model_dir) == ["1"]


def test_missing_variables_are_refused(
    model_dir: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    """A SavedModel whose variables index is missing is incomplete."""
    partial = tmp_path / "partial"
    shutil.copytree(models["good"], partial)
    (partial / "variables" / "variables.index").unlink()
    with pytest.raises(RolloutError) as caught:
        stage_version(partial, model_dir, 2, current=1, allow_signature_change=False, model="m")
    assert "variables.index" in "\n".join(caught.value.evidence)
    assert listing(model_dir) == ["1"]


def test_an_existing_version_directory_is_never_overwritten(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """Staging onto an existing <N> is refused."""
    with pytest.raises(RolloutError, match="already exists"):
        stage_version(
            models["good"], model_dir, 1, current=1, allow_signature_change=False, model="m"
        )


def test_a_version_in_place_is_checked_without_copying(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """No source: the directory already in place is checked (adopted), not copied."""
    shutil.copytree(models["good"], model_dir / "2")
    result = stage_version(None, model_dir, 2, current=1, allow_signature_change=False, model="m")
    assert not result.copied


def test_removal_is_atomic_and_leftovers_are_cleaned(model_dir: Path) -> None:
    """A version disappears from the numbered names at once; dot-dir leftovers are removed."""
    shutil.copytree(model_dir / "1", model_dir / "2")
    (model_dir / f"{STAGING_PREFIX}3-1-abc").mkdir()
    assert remove_version_dir(model_dir, 2)
    assert not remove_version_dir(model_dir, 2)
    assert clean_leftovers(model_dir) == [f"{STAGING_PREFIX}3-1-abc"]
    assert listing(model_dir) == ["1"]


@pytest.fixture
def padded_model_dir(tmp_path: Path, models: dict[str, Path]) -> Path:
    target = tmp_path / "p"
    target.mkdir()
    shutil.copytree(models["v1"], target / "00000001")
    return target


def test_a_new_version_beside_padded_ones_is_padded_too(
    padded_model_dir: Path, models: dict[str, Path]
) -> None:
    """Next to `00000001`, version 2 lands as `00000002`, checked against the padded current."""
    result = stage_version(
        models["good"], padded_model_dir, 2, current=1, allow_signature_change=False, model="p"
    )
    assert result.version_dir == padded_model_dir / "00000002"
    assert listing(padded_model_dir) == ["00000001", "00000002"]


def test_the_current_version_is_found_under_its_padded_name(
    padded_model_dir: Path, models: dict[str, Path]
) -> None:
    """The compatibility check reads `00000001` for version 1: an incompatible candidate fails."""
    with pytest.raises(RolloutError, match="incompatible with version 00000001"):
        stage_version(
            models["bad"], padded_model_dir, 2, current=1, allow_signature_change=False, model="p"
        )
    assert listing(padded_model_dir) == ["00000001"]


def test_a_version_present_under_a_padded_name_is_not_staged_again(
    padded_model_dir: Path, models: dict[str, Path]
) -> None:
    """Staging version 1 with `00000001` on disk is refused, naming the real folder."""
    with pytest.raises(RolloutError, match="00000001 already exists"):
        stage_version(
            models["good"],
            padded_model_dir,
            1,
            current=None,
            allow_signature_change=False,
            model="p",
        )


def test_a_padded_version_in_place_is_adopted(
    padded_model_dir: Path, models: dict[str, Path]
) -> None:
    """No source: `0002` in place is version 2 and is checked where it is."""
    shutil.copytree(models["good"], padded_model_dir / "0002")
    result = stage_version(
        None, padded_model_dir, 2, current=1, allow_signature_change=False, model="p"
    )
    assert result.version_dir == padded_model_dir / "0002" and not result.copied


def test_two_folders_for_one_version_are_an_error_naming_both(
    model_dir: Path, models: dict[str, Path]
) -> None:
    """`1` and `001` both present: staging refuses and names both folders."""
    shutil.copytree(models["v1"], model_dir / "001")
    with pytest.raises(RolloutError, match=r"'001' and '1'.*both version 1"):
        stage_version(
            models["good"], model_dir, 2, current=1, allow_signature_change=False, model="m"
        )


def test_removal_finds_the_padded_folder(padded_model_dir: Path, models: dict[str, Path]) -> None:
    """Removing version 2 removes `0002`, the folder that holds it."""
    shutil.copytree(models["good"], padded_model_dir / "0002")
    assert remove_version_dir(padded_model_dir, 2)
    assert listing(padded_model_dir) == ["00000001"]


def test_a_keras_file_is_exported_with_a_serving_signature(tmp_path: Path) -> None:
    """A .keras file becomes a SavedModel with serving_default before it is placed."""
    import keras  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    model = keras.Sequential([keras.Input((3,), name="features"), keras.layers.Dense(2)])
    source = tmp_path / "model.keras"
    model.save(source)
    target = tmp_path / "k"
    target.mkdir()
    result = stage_version(source, target, 1, current=None, allow_signature_change=False, model="k")
    assert "serving_default" in result.signatures
    serving = result.signatures["serving_default"]
    assert [i.dtype for i in serving.inputs.values()] == ["DT_FLOAT"]
    assert listing(target) == ["1"]
