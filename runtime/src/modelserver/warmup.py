"""Model warmup: replay ``assets.extra/tf_serving_warmup_requests`` before a version is AVAILABLE.

The file is a TFRecord of serialized ``PredictionLog`` messages (predict, classify, regress or
multi_inference logs), at most 1000 records. Any bad record fails the load, like upstream; a missing
file only logs ``No warmup data file found at ...``.

``on_cost(api, seconds)`` hears the warm cost of the first record of each API and signature (its
fastest replay) so the server can teach its :class:`~modelserver.dispatch.InlinePolicy` before the
version serves. The first replays are cold (the session callable is built, caches fill), so such a
record whose first run took less than :data:`COLD_RUN_BUDGET` is replayed while its fastest run
stays under :data:`CHEAP_RUN` until it has run :data:`TIMED_RUNS` times (a few milliseconds for a
tiny model). Slower records (heavy models) are reported with the runs they had and never replayed
more, so a heavy model's load takes no longer than before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from modelserver import inference
from modelserver.errors import Code, ServingError, as_serving_error, invalid_argument
from modelserver.servable import Servable

log = logging.getLogger("modelserver.warmup")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000
COLD_RUN_BUDGET = 0.25
"""A timed record whose first replay took longer than this (seconds) is not replayed more."""
CHEAP_RUN = 0.005
"""Extra timed replays go on only while the fastest run is under this (seconds)."""
TIMED_RUNS = 8
API_OF_KIND = {
    "predict_log": "predict",
    "classify_log": "classify",
    "regress_log": "regress",
    "multi_inference_log": "multi_inference",
}


def read_records(path: str) -> list[bytes]:
    """Every record of a TFRecord file (CRCs checked by TensorFlow); at most MAX_RECORDS."""
    records: list[bytes] = []
    try:
        for record in tf.data.TFRecordDataset(path).take(MAX_RECORDS + 1):
            records.append(bytes(record.numpy()))
    except tf.errors.OpError as exc:
        raise ServingError(
            Code.DATA_LOSS, f"Failed to read warmup record from {path}: {exc.message}"
        ) from exc
    if len(records) > MAX_RECORDS:
        raise invalid_argument(
            f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}"
        )
    return records


def run_warmup(
    servable: Servable,
    iterations: int = 1,
    on_cost: Callable[[str, float], None] | None = None,
) -> int:
    """Replay the warmup file of ``servable``; returns how many records ran."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        log.info("No warmup data file found at %s", path)
        return 0

    records = read_records(path)
    seen: set[tuple[str, str]] = set()
    for index, data in enumerate(records):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(data)
        except Exception as exc:
            raise invalid_argument(
                f"Failed to parse PredictionLog from warmup record {index} of {path}"
            ) from exc
        kind = entry.WhichOneof("log_type")
        timed = on_cost is not None and kind is not None and _first_of_its_kind(entry, kind, seen)
        runs = max(1, iterations)
        fastest = float("inf")
        done = 0
        while done < runs:
            started = time.perf_counter()
            try:
                _replay(entry, kind, servable)
            except Exception as exc:
                error = as_serving_error(exc)
                if error is None:
                    raise
                raise ServingError(
                    error.code, f"Warmup record {index} of {path} failed: {error.message}"
                ) from exc
            seconds = time.perf_counter() - started
            fastest = min(fastest, seconds)
            done += 1
            if (
                timed
                and done == runs < TIMED_RUNS
                and (seconds < COLD_RUN_BUDGET if done == 1 else fastest < CHEAP_RUN)
            ):
                runs += 1  # cheap so far, and the runs may all have been cold: time one more
        if timed and on_cost is not None and kind is not None:
            on_cost(API_OF_KIND[kind], fastest)
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        path,
        len(records),
    )
    return len(records)


def _first_of_its_kind(entry: Any, kind: str, seen: set[tuple[str, str]]) -> bool:
    """Whether ``entry`` is the first record of its API and signature (then it is timed)."""
    if kind == "multi_inference_log":
        signature = ""
    else:
        signature = getattr(entry, kind).request.model_spec.signature_name
    key = (kind, signature)
    if key in seen:
        return False
    seen.add(key)
    return True


def _replay(entry: Any, kind: str | None, servable: Servable) -> None:
    if kind == "predict_log":
        inference.run_predict(servable, entry.predict_log.request, predict_pb2.PredictResponse())
    elif kind == "classify_log":
        inference.run_classify(
            servable, entry.classify_log.request, classification_pb2.ClassificationResponse()
        )
    elif kind == "regress_log":
        inference.run_regress(
            servable, entry.regress_log.request, regression_pb2.RegressionResponse()
        )
    elif kind == "multi_inference_log":
        inference.run_multi_inference(
            servable, entry.multi_inference_log.request, inference_pb2.MultiInferenceResponse()
        )
    else:
        raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
