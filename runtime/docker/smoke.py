"""Build-time check that the pruned venv still serves: TensorFlow saves, loads and runs a model.

Run by the Dockerfile's devel stage after prune.sh; a non-zero exit fails the image build.
"""

import sys
import tempfile

import grpc
import httptools
import tensorflow as tf
import uvloop
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc


class HalfPlusTwo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 0.5 * x + 2.0}


with tempfile.TemporaryDirectory() as tmp:
    module = HalfPlusTwo()
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.__call__})
    loaded = tf.saved_model.load(tmp)
    y = loaded.signatures["serving_default"](x=tf.constant([1.0, 2.0, 5.0]))["y"].numpy().tolist()

if y != [2.5, 3.0, 4.5]:
    sys.exit(f"smoke.py: half_plus_two gave {y}, expected [2.5, 3.0, 4.5]")
stubs = (prediction_service_pb2_grpc.PredictionServiceStub, model_service_pb2_grpc.ModelServiceStub)
print(
    f"smoke.py: TensorFlow {tf.__version__} OK (y={y}); grpc {grpc.__version__}, "
    f"httptools {httptools.__version__}, uvloop {uvloop.__version__}, {len(stubs)} stubs"
)
