"""Unit tests of tfstack.models.demo: signatures, math, warmup files and atomic placement."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tfstack.models import demo as demo_models
from tfstack.models.demo import WARMUP_FILE, DemoModelError


def serialized_examples(*xs: float) -> tf.Tensor:
    examples = []
    for x in xs:
        example = tf.train.Example()
        example.features.feature["x"].float_list.value.append(x)
        examples.append(example.SerializeToString())
    return tf.constant(examples)


def signature_defs(version_dir: Path) -> dict[str, object]:
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    return dict(saved.meta_graphs[0].signature_def)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    results = demo_models.write_demo_models(root, include_resnet=False)
    assert [r.written for r in results] == [True, True, True]
    return root


def test_half_plus_two_signatures_match_upstream(repository: Path) -> None:
    """Keys, input/output names, dtypes and method names are upstream half_plus_two's."""
    defs = signature_defs(repository / "half_plus_two/1")
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"} <= set(defs)
    serving = defs["serving_default"]
    assert serving.method_name == "tensorflow/serving/predict"
    assert list(serving.inputs) == ["x"] and list(serving.outputs) == ["y"]
    assert serving.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in serving.inputs["x"].tensor_shape.dim] == [-1]
    assert defs["classify_x_to_y"].method_name == "tensorflow/serving/classify"
    assert list(defs["classify_x_to_y"].inputs) == ["inputs"]
    assert defs["classify_x_to_y"].inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert list(defs["classify_x_to_y"].outputs) == ["scores"]
    for key in ("regress_x_to_y", "regress_x_to_y2"):
        assert defs[key].method_name == "tensorflow/serving/regress"
        assert list(defs[key].inputs) == ["inputs"] and list(defs[key].outputs) == ["outputs"]


def test_half_plus_two_math(repository: Path) -> None:
    """y = 0.5x + 2 for predict, classify and regress_x_to_y; regress_x_to_y2 is 0.5x + 3."""
    model = tf.saved_model.load(str(repository / "half_plus_two/1"))
    predict = model.signatures["serving_default"](x=tf.constant([1.0, 2.0, 5.0]))
    assert predict["y"].numpy().tolist() == [2.5, 3.0, 4.5]
    examples = serialized_examples(2.0, 4.0)
    scores = model.signatures["classify_x_to_y"](inputs=examples)["scores"]
    assert scores.shape == (2, 1) and scores.numpy().tolist() == [[3.0], [4.0]]
    assert model.signatures["regress_x_to_y"](inputs=examples)["outputs"].numpy().tolist() == [
        [3.0],
        [4.0],
    ]
    assert model.signatures["regress_x_to_y2"](inputs=examples)["outputs"].numpy().tolist() == [
        [4.0],
        [5.0],
    ]


def test_half_plus_three_and_the_candidate_use_plus_three(repository: Path) -> None:
    """half_plus_three/1 and the rollout candidate half_plus_two/2 both answer 0.5x + 3."""
    for relative in ("half_plus_three/1", "candidates/half_plus_two/2"):
        model = tf.saved_model.load(str(repository / relative))
        assert model.signatures["serving_default"](x=tf.constant([2.0]))["y"].numpy().tolist() == [
            4.0
        ]


def test_the_candidate_is_outside_the_served_base_path(repository: Path) -> None:
    """The served base path half_plus_two/ holds only version 1; version 2 waits elsewhere."""
    assert sorted(p.name for p in (repository / "half_plus_two").iterdir()) == ["1"]
    assert (repository / "candidates/half_plus_two/2/saved_model.pb").is_file()


def test_warmup_files_are_prediction_logs_for_each_signature(repository: Path) -> None:
    """assets.extra/tf_serving_warmup_requests is a TFRecord of PredictionLog protos."""
    path = repository / "half_plus_two/1" / WARMUP_FILE
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path))
    ]
    kinds = [log.WhichOneof("log_type") for log in logs]
    assert kinds == ["predict_log", "classify_log", "regress_log", "regress_log"]
    predict = logs[0].predict_log.request
    assert predict.model_spec.name == "half_plus_two"
    assert tf.make_ndarray(predict.inputs["x"]).tolist() == [1.0, 2.0, 5.0]
    assert logs[3].regress_log.request.model_spec.signature_name == "regress_x_to_y2"


def test_existing_models_are_kept_unless_forced(repository: Path) -> None:
    """A second run keeps complete models; the plan shows keep/replace accordingly."""
    steps = demo_models.plan_demo_models(repository, include_resnet=False)
    assert {s.action for s in steps} == {"keep"}
    forced = demo_models.plan_demo_models(repository, force=True, include_resnet=True)
    assert [s.action for s in forced] == ["replace", "replace", "replace", "write"]
    results = demo_models.write_demo_models(repository, include_resnet=False)
    assert not any(r.written for r in results)


def test_an_incomplete_version_is_rebuilt(tmp_path: Path) -> None:
    """A version directory without its warmup file (an interrupted copy) is replaced."""
    partial = tmp_path / "half_plus_three/1"
    partial.mkdir(parents=True)
    (partial / "saved_model.pb").write_bytes(b"junk")
    steps = demo_models.plan_demo_models(tmp_path, include_resnet=False)
    assert [s.action for s in steps] == ["write", "replace", "write"]


def test_placement_is_atomic_and_failures_leave_nothing(tmp_path: Path) -> None:
    """A writer that fails midway leaves no version directory and no staging directory."""
    final = tmp_path / "m" / "1"

    def broken(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        demo_models.place_atomically(final, broken)
    assert list((tmp_path / "m").iterdir()) == []


def test_placement_builds_under_a_non_numeric_name_then_renames(tmp_path: Path) -> None:
    """While building, only a non-numeric staging name exists (a server ignores it)."""
    final = tmp_path / "m" / "7"
    seen: list[str] = []

    def writer(path: Path) -> None:
        seen.extend(p.name for p in path.parent.iterdir())
        seen.append(path.name)
        (path / WARMUP_FILE).parent.mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"pb")
        (path / WARMUP_FILE).write_bytes(b"")

    demo_models.place_atomically(final, writer)
    assert seen and not any(name.isdigit() for name in seen)
    assert sorted(p.name for p in final.parent.iterdir()) == ["7"]


def test_a_writer_that_leaves_no_saved_model_is_an_error(tmp_path: Path) -> None:
    """An empty result is refused instead of being renamed into place."""
    with pytest.raises(DemoModelError, match=r"no saved_model\.pb"):
        demo_models.place_atomically(tmp_path / "m" / "1", lambda path: path.mkdir(parents=True))
    assert not (tmp_path / "m" / "1").exists()


@pytest.mark.slow
def test_resnet_signature_and_outputs(tmp_path: Path) -> None:
    """ResNet-50: image_bytes DT_STRING [-1] -> classes DT_INT64 [-1], probabilities [-1, 1001]."""
    path = tmp_path / "resnet" / "1"
    demo_models.place_atomically(path, demo_models.write_resnet)
    serving = signature_defs(path)["serving_default"]
    assert list(serving.inputs) == ["image_bytes"]
    assert serving.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in serving.inputs["image_bytes"].tensor_shape.dim] == [-1]
    assert serving.outputs["classes"].dtype == tf.int64.as_datatype_enum
    assert [d.size for d in serving.outputs["classes"].tensor_shape.dim] == [-1]
    assert serving.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in serving.outputs["probabilities"].tensor_shape.dim] == [-1, 1001]
    model = tf.saved_model.load(str(path))
    jpeg = demo_models.sample_jpeg(64)
    out = model.signatures["serving_default"](image_bytes=tf.constant([jpeg, jpeg]))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (2, 1001)
    assert abs(float(probabilities[0].sum()) - 1.0) < 1e-3
    assert out["classes"].numpy().tolist() == [int(probabilities[0].argmax())] * 2
    logs = list(tf.data.TFRecordDataset(str(path / WARMUP_FILE)))
    assert len(logs) == 1
