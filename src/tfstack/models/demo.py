"""The demo model repository: SavedModels written with TensorFlow, nothing downloaded.

Interface:
  ``plan_demo_models(root, *, force=False, include_resnet=True) -> list[DemoModelStep]`` says what
      would be written or kept (pure; ``invoke models --dry-run`` prints it);
  ``write_demo_models(root, *, force=False, include_resnet=True, say=None)`` carries the plan out
      (``-> list[DemoModelResult]``) and reports each model's path, size and seconds;
  ``write_half_plus(path, offset, offset2)`` / ``write_resnet(path, seed)`` write one version
      directory each (TensorFlow is imported lazily), used by integration tests with temp dirs.

Layout under ``root`` (``<model>/<version>/saved_model.pb`` as TF Serving expects)::

  half_plus_two/1      serving_default x float32 [-1] -> y = 0.5x + 2; classify_x_to_y,
                       regress_x_to_y (0.5x + 2) and regress_x_to_y2 (0.5x + 3) on serialized
                       tf.Example `inputs`
  half_plus_three/1    the same signatures with 0.5x + 3 (and 0.5x + 4 for regress_x_to_y2)
  resnet/1             ResNet-50, fixed random weights: image_bytes (JPEG) -> classes, probabilities
  candidates/half_plus_two/2   0.5x + 3: a rollout candidate, outside any served base path

Every version carries ``assets.extra/tf_serving_warmup_requests``. A version is built under a
non-numeric temporary name beside its final place and renamed into place, so a server polling the
base path never sees a partial version.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.core.progress import Say
from tfstack.errors import TfstackError

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
RESNET_SEED = 20240101
RESNET_CLASSES = 1001
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class DemoModelError(TfstackError):
    """Writing a demo model failed; nothing partial was left in the served directories."""


@dataclass(frozen=True)
class DemoModel:
    """One version directory of the demo repository and how to write it."""

    name: str
    version: int
    relative: Path  # version directory relative to the repository root
    description: str
    writer: Callable[[Path], None]
    heavy: bool = False  # slow and large (ResNet-50)


@dataclass(frozen=True)
class DemoModelStep:
    """What the plan does with one model: ``write`` (missing), ``replace`` (force) or ``keep``."""

    model: DemoModel
    path: Path
    action: str


@dataclass(frozen=True)
class DemoModelResult:
    name: str
    version: int
    path: Path
    written: bool
    seconds: float
    size_bytes: int


def demo_models(include_resnet: bool = True) -> list[DemoModel]:
    """The models of the demo repository, in writing order."""
    models = [
        DemoModel(
            "half_plus_two",
            1,
            Path("half_plus_two/1"),
            "y = 0.5x + 2",
            lambda path: write_half_plus(path, offset=2.0, offset2=3.0, model_name="half_plus_two"),
        ),
        DemoModel(
            "half_plus_three",
            1,
            Path("half_plus_three/1"),
            "y = 0.5x + 3",
            lambda path: write_half_plus(
                path, offset=3.0, offset2=4.0, model_name="half_plus_three"
            ),
        ),
        DemoModel(
            "half_plus_two",
            2,
            Path("candidates/half_plus_two/2"),
            "rollout candidate, y = 0.5x + 3 (not served)",
            lambda path: write_half_plus(path, offset=3.0, offset2=4.0, model_name="half_plus_two"),
        ),
    ]
    if include_resnet:
        models.append(
            DemoModel(
                "resnet",
                1,
                Path("resnet/1"),
                "ResNet-50, fixed random weights",
                lambda path: write_resnet(path, seed=RESNET_SEED),
                heavy=True,
            )
        )
    return models


def is_complete(version_dir: Path) -> bool:
    """A version directory holds a SavedModel and its warmup file (what this module writes last)."""
    return (version_dir / "saved_model.pb").is_file() and (version_dir / WARMUP_FILE).is_file()


def plan_demo_models(
    root: Path, *, force: bool = False, include_resnet: bool = True
) -> list[DemoModelStep]:
    steps = []
    for model in demo_models(include_resnet):
        path = root / model.relative
        if not path.exists():
            action = "write"
        elif force or not is_complete(path):
            action = "replace"
        else:
            action = "keep"
        steps.append(DemoModelStep(model, path, action))
    return steps


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _remove_stale_builds(parent: Path) -> None:
    """Leftovers of an interrupted run: non-numeric names this module uses for staging."""
    if parent.is_dir():
        for child in parent.iterdir():
            if child.name.startswith((".building-", ".replaced-")) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def place_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Build into a staging directory beside ``final`` and rename it into place.

    The staging name is not a number, so TF Serving's version scan ignores it. A previous
    directory at ``final`` is moved aside first and removed after the new one is in place.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".building-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build(staging)
        if not is_complete(staging):
            raise DemoModelError(f"{staging}: the writer left no saved_model.pb or warmup file")
        old = None
        if final.exists():
            old = parent / f".replaced-{final.name}-{os.getpid()}"
            final.rename(old)
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_demo_models(
    root: Path,
    *,
    force: bool = False,
    include_resnet: bool = True,
    say: Say | None = None,
) -> list[DemoModelResult]:
    """Write the missing (or, with ``force``, all) demo models under ``root``."""
    results = []
    for step in plan_demo_models(root, force=force, include_resnet=include_resnet):
        model = step.model
        _remove_stale_builds(step.path.parent)
        if step.action == "keep":
            results.append(
                DemoModelResult(model.name, model.version, step.path, False, 0.0, _size(step.path))
            )
            continue
        if say:
            say(f"writing {model.relative} ({model.description})")
        started = time.monotonic()
        try:
            place_atomically(step.path, model.writer)
        except DemoModelError:
            raise
        except Exception as exc:
            raise DemoModelError(
                f"writing demo model {model.name} version {model.version} to {step.path} failed: "
                f"{type(exc).__name__}: {exc}",
                hint="check free disk space and that TensorFlow imports (`.venv/bin/python -c "
                "'import tensorflow'`); nothing partial was left in place",
            ) from exc
        results.append(
            DemoModelResult(
                model.name,
                model.version,
                step.path,
                True,
                time.monotonic() - started,
                _size(step.path),
            )
        )
    return results


# --------------------------------------------------------------------------- the models


def _set_method_names(export_dir: Path, methods: dict[str, str]) -> None:
    """TF2 saves every signature as `predict`; upstream's classify/regress have their own method."""
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    path = export_dir / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    path.write_bytes(saved.SerializeToString())
    # fingerprint.pb checksums saved_model.pb: recompute it (internal TF API; without it, drop the
    # file rather than leave a stale checksum: fingerprints are optional for loading).
    fingerprint = export_dir / "fingerprint.pb"
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting  # noqa: PLC0415  # TensorFlow: seconds to import, only here

        fingerprint.write_bytes(fingerprinting.CreateFingerprintDef(str(export_dir)))
    except (ImportError, AttributeError, RuntimeError, ValueError):
        fingerprint.unlink(missing_ok=True)


def _write_warmup(export_dir: Path, logs: list[Any]) -> None:
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    target = export_dir / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def _example(x: float) -> Any:
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(x)
    return example


def write_half_plus(
    path: Path,
    *,
    offset: float,
    offset2: float,
    model_name: str,
    extra: Callable[[Any], Any] | None = None,
) -> None:
    """half_plus_two's signatures with y = 0.5x + offset (regress_x_to_y2: 0.5x + offset2).

    ``extra(x)``, traced into serving_default, is added to y: the canary benchmark's slow and
    faulty candidates (same signatures, other behaviour) come from it.
    """
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    from tensorflow_serving.apis import (  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    feature_spec = {
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
    }

    # Functions attached to a tf.Module (not a subclass) so the library stays typed under mypy.
    module = tf.Module()
    module.a = tf.Variable(0.5, name="a")
    module.b = tf.Variable(offset, name="b")
    module.c = tf.Variable(offset2, name="c")
    floats = [tf.TensorSpec([None], tf.float32, name="x")]
    examples = [tf.TensorSpec([None], tf.string, name="inputs")]

    def parse_x(serialized: Any) -> Any:
        return tf.io.parse_example(serialized, feature_spec)["x"]

    def predict(x: Any) -> dict[str, Any]:
        y = module.a * x + module.b
        return {"y": y if extra is None else y + extra(x)}

    def classify_x_to_y(inputs: Any) -> dict[str, Any]:
        return {"scores": module.a * parse_x(inputs) + module.b}

    def regress_x_to_y(inputs: Any) -> dict[str, Any]:
        return {"outputs": module.a * parse_x(inputs) + module.b}

    def regress_x_to_y2(inputs: Any) -> dict[str, Any]:
        return {"outputs": module.a * parse_x(inputs) + module.c}

    signatures = {
        "serving_default": tf.function(predict, input_signature=floats),
        "classify_x_to_y": tf.function(classify_x_to_y, input_signature=examples),
        "regress_x_to_y": tf.function(regress_x_to_y, input_signature=examples),
        "regress_x_to_y2": tf.function(regress_x_to_y2, input_signature=examples),
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    _set_method_names(
        path,
        {
            "classify_x_to_y": CLASSIFY_METHOD,
            "regress_x_to_y": REGRESS_METHOD,
            "regress_x_to_y2": REGRESS_METHOD,
        },
    )

    def spec(signature: str) -> Any:
        return model_pb2.ModelSpec(name=model_name, signature_name=signature)

    predict_request = predict_pb2.PredictRequest(model_spec=spec("serving_default"))
    predict_request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    classify = classification_pb2.ClassificationRequest(model_spec=spec("classify_x_to_y"))
    classify.input.example_list.examples.append(_example(2.0))
    logs = [
        prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=predict_request)
        ),
        prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)
        ),
    ]
    for signature in ("regress_x_to_y", "regress_x_to_y2"):
        regress = regression_pb2.RegressionRequest(model_spec=spec(signature))
        regress.input.example_list.examples.append(_example(2.0))
        logs.append(
            prediction_log_pb2.PredictionLog(
                regress_log=prediction_log_pb2.RegressLog(request=regress)
            )
        )
    _write_warmup(path, logs)


def sample_jpeg(size: int = 224) -> bytes:
    """A deterministic JPEG (colour gradient) for warmup and tests."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here

    ramp = tf.linspace(0.0, 255.0, size)
    red = tf.tile(ramp[tf.newaxis, :], [size, 1])
    green = tf.transpose(red)
    blue = tf.fill([size, size], 128.0)
    image = tf.cast(tf.stack([red, green, blue], axis=-1), tf.uint8)
    return bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def write_resnet(path: Path, *, seed: int = RESNET_SEED) -> None:
    """ResNet-50 (random weights fixed by ``seed``, 1001 classes) behind a JPEG-bytes signature."""
    import keras  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    keras.utils.set_random_seed(seed)
    network = keras.applications.ResNet50(weights=None, classes=RESNET_CLASSES)

    def decode(jpeg: Any) -> Any:
        image = tf.io.decode_jpeg(jpeg, channels=3)
        return tf.image.resize(image, [224, 224])

    def serve(image_bytes: Any) -> dict[str, Any]:
        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([224, 224, 3], tf.float32)
        )
        images = keras.applications.resnet50.preprocess_input(images)
        probabilities = network(images, training=False)
        return {
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "probabilities": probabilities,
        }

    module = tf.Module()
    # Track the backing tf.Variables, not the Keras 3 wrappers: tracking ``network`` saves a
    # second set of variables that the TF1/C++ SavedModel loader (TF Serving's) restores while
    # the serving graph reads the uninitialised first set ("Could not find variable ...").
    module.weights_ = [weight.value for weight in network.weights]
    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="resnet", signature_name="serving_default")
    )
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([sample_jpeg()], dtype=tf.string))
    _write_warmup(
        path,
        [
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        ],
    )
