"""TF Serving protos load without TensorFlow's runtime, and a later real TensorFlow reuses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfstack.serving.protos import _plan


def _run_fresh(script: str) -> dict[str, object]:
    """Run ``script`` in a new interpreter (clean sys.modules); it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_grpc_requests_build_without_loading_tensorflow_runtime() -> None:
    """Building every gRPC request the client sends never executes tensorflow/__init__.py."""
    result = _run_fresh(
        """
        import json, sys
        from tfstack.serving.client import GrpcClient, ModelRef, predict_request
        from tfstack.serving.tensors import Tensor

        request = predict_request(
            ModelRef("half_plus_two", version=2),
            {"x": Tensor("DT_FLOAT", (3,), (1.0, 2.0, 5.0))},
            signature="serving_default",
        )
        client = GrpcClient("127.0.0.1:1")  # channels connect lazily: nothing is dialled
        client.close()
        from tensorflow.core.protobuf import error_codes_pb2
        from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
        from tensorflow_serving.apis import predict_pb2

        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "m"
        reload = model_management_pb2.ReloadConfigRequest()
        reload.config.model_config_list.config.add(name="m", base_path="/models/m")
        parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        print(json.dumps({
            "tensorflow": "tensorflow" in sys.modules,
            "tensorflow.python": "tensorflow.python" in sys.modules,
            "loaded": sorted(m for m in sys.modules if m.startswith("tensorflow.")),
            "values": list(parsed.inputs["x"].float_val),
            "version": parsed.model_spec.version.value,
            "code": error_codes_pb2.Code.Name(5),
            "bytes": len(status.SerializeToString()) + len(reload.SerializeToString()),
        }))
        """
    )
    assert result["tensorflow"] is False
    assert result["tensorflow.python"] is False
    assert "tensorflow.core.framework.tensor_pb2" in result["loaded"]  # type: ignore[operator]
    assert result["values"] == [1.0, 2.0, 5.0]
    assert result["version"] == 2
    assert result["code"] == "NOT_FOUND"
    assert isinstance(result["bytes"], int) and result["bytes"] > 0


@pytest.mark.slow
def test_real_tensorflow_imported_afterwards_reuses_the_loaded_protos() -> None:
    """After the fast path, ``import tensorflow`` works and shares the same protobuf classes."""
    result = _run_fresh(
        """
        import json, sys
        from tfstack.serving.client import ModelRef, predict_request
        from tfstack.serving.tensors import Tensor
        from tfstack.serving.protos import load_serving_protos

        request = predict_request(ModelRef("m"), {"x": Tensor("DT_FLOAT", (2,), (1.5, 2.5))})
        before = {m: id(mod) for m, mod in sys.modules.items() if m.startswith("tensorflow.")}
        assert "tensorflow" not in sys.modules

        import tensorflow as tf
        from tensorflow.core.framework import graph_pb2, tensor_pb2

        made = tf.make_tensor_proto([[1.0, 2.0]], dtype=tf.float32)
        request.inputs["y"].CopyFrom(made)  # same class, so no conversion error
        parsed = type(request.inputs["x"]).FromString(made.SerializeToString())
        doubled = tf.function(lambda v: v * 2.0).get_concrete_function(
            tf.TensorSpec([None], tf.float32)
        )
        # Loading more protos once the real package is in place takes the ordinary path.
        load_serving_protos(["tensorflow_serving.apis.classification_pb2"])
        print(json.dumps({
            "same_class": type(made) is tensor_pb2.TensorProto is type(request.inputs["x"]),
            "graph_class": type(doubled.graph.as_graph_def()) is graph_pb2.GraphDef,
            "reused": all(id(sys.modules[m]) == i for m, i in before.items()),
            "real_package": sys.modules["tensorflow"].__file__,
            "made_shape": [d.size for d in parsed.tensor_shape.dim],
            "ours_as_array": tf.make_ndarray(request.inputs["x"]).tolist(),
            "computed": doubled(tf.constant([1.0, 4.0])).numpy().tolist(),
        }))
        """
    )
    assert result["same_class"] is True
    assert result["graph_class"] is True
    assert result["reused"] is True
    assert str(result["real_package"]).endswith("tensorflow/__init__.py")
    assert result["made_shape"] == [1, 2]
    assert result["ours_as_array"] == [1.5, 2.5]
    assert result["computed"] == [2.0, 8.0]


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {
        "tensorflow": tmp_path / "tensorflow",
        "tensorflow_serving": tmp_path / "tensorflow_serving",
    }


GENERATED = {
    "tensorflow/__init__.py": "import heavy_runtime\n",
    "tensorflow/core/__init__.py": "",
    "tensorflow/core/framework/__init__.py": "",
    "tensorflow/core/framework/a_pb2.py": "from tensorflow.core.framework import b_pb2 as b\n",
    "tensorflow/core/framework/b_pb2.py": "from tensorflow.core.lib import c_pb2\n",
    "tensorflow/core/lib/__init__.py": "",
    "tensorflow/core/lib/c_pb2.py": "from google.protobuf import descriptor\n",
    "tensorflow_serving/__init__.py": "",
    "tensorflow_serving/apis/__init__.py": "",
    "tensorflow_serving/apis/entry_pb2.py": (
        "from tensorflow.core.framework import a_pb2\nfrom tensorflow_serving.apis import x_pb2\n"
    ),
    "tensorflow_serving/apis/x_pb2.py": "from tensorflow.core.lib.c_pb2 import *\n",
}


def test_plan_orders_tensorflow_modules_after_their_dependencies(tmp_path: Path) -> None:
    """Each TF module is imported after what it imports, packages parents first (no __import__
    of the top-level ``tensorflow``), and ``tensorflow`` itself is never among them."""
    roots = _tree(tmp_path, GENERATED)
    plan = _plan(["tensorflow_serving.apis.entry_pb2"], roots)
    assert plan is not None
    packages, modules = plan
    names = [name for name, _ in packages]
    assert sorted(names) == ["tensorflow.core", "tensorflow.core.framework", "tensorflow.core.lib"]
    assert names[0] == "tensorflow.core"
    assert dict(packages)["tensorflow.core.lib"] == roots["tensorflow"] / "core" / "lib"
    assert modules.index("tensorflow.core.lib.c_pb2") < modules.index(
        "tensorflow.core.framework.b_pb2"
    )
    assert modules.index("tensorflow.core.framework.b_pb2") < modules.index(
        "tensorflow.core.framework.a_pb2"
    )
    assert set(modules) == {
        "tensorflow.core.framework.a_pb2",
        "tensorflow.core.framework.b_pb2",
        "tensorflow.core.lib.c_pb2",
    }


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"tensorflow/core/lib/__init__.py": "from tensorflow.python import x\n"}, "busy init"),
        ({"tensorflow/core/lib/__init__.py": '"""docstring only still runs code"""\n'}, "init"),
        ({"tensorflow/core/framework/a_pb2.py": "import tensorflow.core.lib.c_pb2\n"}, "plain"),
        (
            {"tensorflow_serving/apis/x_pb2.py": "from tensorflow import core\n"},
            "top-level package",
        ),
        (
            {"tensorflow_serving/apis/x_pb2.py": "from tensorflow.core.gone import d_pb2\n"},
            "missing module",
        ),
    ],
)
def test_plan_refuses_when_the_fast_path_is_not_safe(
    tmp_path: Path, change: dict[str, str], why: str
) -> None:
    """Anything beyond empty packages and generated ``from`` imports means: import normally."""
    roots = _tree(tmp_path, {**GENERATED, **change})
    assert _plan(["tensorflow_serving.apis.entry_pb2"], roots) is None, why


def test_an_import_the_plan_missed_falls_back_to_the_ordinary_import(tmp_path: Path) -> None:
    """If a module imports TensorFlow in a way the plan cannot see, the half-done fast path is
    dropped and the ordinary import (running tensorflow/__init__.py) loads everything once."""
    files = {
        **GENERATED,
        "tensorflow/__init__.py": "import builtins\nbuiltins.REAL_INIT_RAN = True\n",
        # A computed import: invisible to the plan, so it reaches the top-level package.
        "tensorflow/core/lib/c_pb2.py": "LOADS = __import__('tensorflow.core.framework' + '')\n",
    }
    _tree(tmp_path, files)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import builtins, json, sys
                from tfstack.serving.protos import load_serving_protos
                load_serving_protos(["tensorflow_serving.apis.entry_pb2"])
                a = sys.modules["tensorflow.core.framework.a_pb2"]
                print(json.dumps({
                    "real_init": getattr(builtins, "REAL_INIT_RAN", False),
                    "package": sys.modules["tensorflow"].__file__,
                    "chained": a.b.c_pb2.LOADS is sys.modules["tensorflow"],
                    "attached": sys.modules["tensorflow"].core.framework.a_pb2 is a,
                }))
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "real_init": True,
        "package": str(tmp_path / "tensorflow" / "__init__.py"),
        "chained": True,
        "attached": True,
    }
