"""Model warmup: replay ``assets.extra/tf_serving_warmup_requests`` before a version is AVAILABLE.

The file is a TFRecord of serialized ``PredictionLog`` messages (predict, classify, regress or
multi_inference logs), at most 1000 records. Any bad record fails the load, like upstream; a missing
file only logs ``No warmup data file found at ...``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modelserver import inference
from modelserver.servable import Servable
from modelserver.status import Code, ServingError, as_serving_error, invalid_argument

log = logging.getLogger("modelserver.warmup")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000


def read_records(path: str) -> list[bytes]:
    """Every record of a TFRecord file (CRCs checked by TensorFlow); at most MAX_RECORDS."""
    import tensorflow as tf

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


def run_warmup(servable: Servable, iterations: int = 1) -> int:
    """Replay the warmup file of ``servable``; returns how many records ran."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        log.info("No warmup data file found at %s", path)
        return 0
    from tensorflow_serving.apis import prediction_log_pb2

    records = read_records(path)
    for index, data in enumerate(records):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(data)
        except Exception as exc:
            raise invalid_argument(
                f"Failed to parse PredictionLog from warmup record {index} of {path}"
            ) from exc
        kind = entry.WhichOneof("log_type")
        for _ in range(max(1, iterations)):
            try:
                _replay(entry, kind, servable)
            except Exception as exc:
                error = as_serving_error(exc)
                if error is None:
                    raise
                raise ServingError(
                    error.code, f"Warmup record {index} of {path} failed: {error.message}"
                ) from exc
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        path,
        len(records),
    )
    return len(records)


def _replay(entry: Any, kind: str | None, servable: Servable) -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        inference_pb2,
        predict_pb2,
        regression_pb2,
    )

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
