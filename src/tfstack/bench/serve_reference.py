"""What ``bench serve`` sends and what it compares with: request bodies built the seed's way, and
the in-process TensorFlow call (``tf.saved_model.load`` + the serving signature, warm) measured in
a fresh interpreter in the same run.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfstack.errors import StackError

SMALL_BODY = b'{"instances": [1.0, 2.0, 5.0]}'


def grpc_predict_bytes(model: str, alias: str, values: Any, dtype: Any) -> bytes:
    """A serialized PredictRequest built the seed's way (``make_tensor_proto``)."""
    import tensorflow as tf  # noqa: PLC0415  # TensorFlow: seconds to import, only here
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415  # after load_serving_protos(), without TensorFlow

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return bytes(request.SerializeToString())


def resnet_rest_body(jpeg: bytes) -> bytes:
    return b'{"instances": [{"b64": "' + base64.b64encode(jpeg) + b'"}]}'


_REFERENCE_SNIPPET = """
import json, sys, time
import tensorflow as tf
path, kind, warm, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
loaded = tf.saved_model.load(path)
function = loaded.signatures["serving_default"]
if kind == "small":
    feed = {"x": tf.constant([1.0, 2.0, 5.0])}
else:
    feed = {"image_bytes": tf.constant([open(sys.argv[6], "rb").read()] * batch)}
first_started = time.perf_counter()
function(**feed)
first = time.perf_counter() - first_started
for _ in range(warm):
    function(**feed)
times = []
for _ in range(count):
    started = time.perf_counter()
    result = function(**feed)
    for value in result.values():
        value.numpy()
    times.append((time.perf_counter() - started) * 1000)
print(json.dumps({"first_ms": first * 1000, "latencies_ms": times}))
"""


@dataclass(frozen=True)
class Reference:
    first_ms: float
    latencies_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


def in_process_reference(
    model_dir: Path,
    kind: str,
    *,
    warm: int,
    count: int,
    cpus: str | None,
    batch: int = 1,
    jpeg: Path | None = None,
) -> Reference:
    """``tf.saved_model.load`` + the serving signature called in a fresh interpreter."""
    command = [
        sys.executable,
        "-c",
        _REFERENCE_SNIPPET,
        str(model_dir),
        kind,
        str(warm),
        str(count),
        str(batch),
        str(jpeg or ""),
    ]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=env
    )
    if result.returncode != 0:
        raise StackError(
            f"in-process reference for {model_dir} failed: {result.stderr.strip()[-800:]}"
        )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return Reference(data["first_ms"], data["latencies_ms"])
