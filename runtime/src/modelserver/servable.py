"""One loaded model version: a SavedModel in a TensorFlow session, and the calls run on it.

Like upstream's ``SavedModelBundle``, a servable is a session plus the MetaGraphDef tagged
``serve``:
signature tensors are fed and fetched by the names recorded in the SignatureDefs, so TF1 and TF2
SavedModels behave the same, error texts come from the TensorFlow runtime, and metadata is the
SignatureDef map exactly as stored. Session calls release the GIL while TensorFlow computes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import get_model_metadata_pb2

from modelserver import codec
from modelserver.errors import Code, ServingError, as_serving_error, invalid_argument, shown

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

# A tensor whose element count exceeds this is refused before anything is allocated.
MAX_TENSOR_ELEMENTS = 1 << 31


@dataclass(frozen=True)
class SessionOptions:
    """What upstream's session flags set: op parallelism and the MetaGraph tags to load."""

    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    tags: tuple[str, ...] = ("serve",)


def status_from_exception(exc: BaseException) -> ServingError:
    """A TF status for any exception raised by TensorFlow or by this package."""
    known = as_serving_error(exc)
    if known is not None:
        return known

    if isinstance(exc, tf.errors.OpError):
        code = Code(exc.error_code) if exc.error_code in Code._value2member_map_ else Code.UNKNOWN
        return ServingError(code, exc.message)
    if isinstance(exc, (ValueError, TypeError)):
        return invalid_argument(str(exc))
    return ServingError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}")


class Servable:
    """A loaded version: thread-safe ``run``; in-flight tracking so unloads never cut requests."""

    def __init__(self, name: str, version: int, path: str, session: Any, meta_graph: Any) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._session = session
        self.meta_graph = meta_graph
        self.signatures: Mapping[str, Any] = meta_graph.signature_def
        self._callables: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Runner] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._closed = False
        # Per-servable memo for callers (e.g. REST input specs per signature).
        self.cache: dict[Any, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Hold the servable for one request; False once it is closing."""
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    @contextmanager
    def in_use(self) -> Iterator[Servable]:
        """Hold the servable for one request; ``close`` waits until every holder is done."""
        if not self.try_acquire():
            raise ServingError(
                Code.UNAVAILABLE, f"Servable {self.name} version {self.version} is unloading"
            )
        try:
            yield self
        finally:
            self.release()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, wait for in-flight ones, then free the session."""
        with self._lock:
            self._closed = True
            self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)
            self._callables.clear()
        self._session.close()

    # -- signatures ----------------------------------------------------------------------------
    def signature(self, name: str) -> Any:
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise ServingError(
                Code.FAILED_PRECONDITION, f'Serving signature key "{shown(key)}" not found.'
            )
        return signature

    def signature_def_map(self) -> Any:
        result = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signatures.items():
            result.signature_def[key].CopyFrom(value)
        return result

    # -- running -------------------------------------------------------------------------------
    def run(
        self, signature_name: str, feeds: Mapping[str, Any], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Feed signature inputs by alias and fetch the given output aliases."""
        input_keys = tuple(sorted(feeds))
        output_keys = tuple(outputs)
        key = (signature_name or DEFAULT_SIGNATURE, input_keys, output_keys)
        runner = self._callables.get(key)
        try:
            if runner is None:
                runner = _Runner(self._session, self.signature(signature_name), key)
                self._callables[key] = runner
            values = runner(feeds)
        except Exception as exc:
            raise status_from_exception(exc) from exc
        return dict(zip(output_keys, values, strict=True))

    def prepare_predict(
        self, signature_name: str, inputs: Mapping[str, Any], output_filter: Sequence[str] = ()
    ) -> list[str]:
        """Upstream's Predict checks: input aliases exactly the signature's, a valid output
        filter; returns the output aliases to fetch."""
        signature = self.signature(signature_name)
        check_inputs(signature, inputs)
        if not output_filter:
            return sorted(signature.outputs)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {shown(alias)} Outputs expected"
                    f" to be in the set {{{','.join(sorted(signature.outputs))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {shown(alias)}")
            seen.add(alias)
        return list(output_filter)

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Upstream's Predict: checked inputs, optional output filter, one session run."""
        outputs = self.prepare_predict(signature_name, inputs, output_filter)
        return self.run(signature_name, inputs, outputs)

    def classify(self, signature_name: str, examples: Sequence[bytes]) -> codec.Classifications:
        """Upstream's Classify on serialized tf.Examples (post-processing shared with REST)."""
        signature = self.signature(signature_name)
        input_alias = _single_string_input(signature)
        wanted = [a for a in ("classes", "scores") if a in signature.outputs]
        if not wanted:
            raise invalid_argument(
                "Expected classification signature outputs to contain at least one of "
                "'classes' or 'scores'"
            )
        batch = np.array(examples, dtype=object)
        outputs = self.run(signature_name, {input_alias: batch}, wanted)
        return codec.classification_results(outputs, len(examples))

    def regress(self, signature_name: str, examples: Sequence[bytes]) -> np.ndarray:
        """Upstream's Regress on serialized tf.Examples: one float32 per example."""
        signature = self.signature(signature_name)
        input_alias = _single_string_input(signature)
        if "outputs" not in signature.outputs:
            raise ServingError(
                Code.FAILED_PRECONDITION, "No regression outputs found in SignatureDef"
            )
        batch = np.array(examples, dtype=object)
        outputs = self.run(signature_name, {input_alias: batch}, ["outputs"])
        return codec.regression_results(outputs, len(examples))


class _Runner:
    """One (signature, inputs, outputs) combination as a C++ ``Session::MakeCallable`` handle.

    ``Session.make_callable`` with feeds falls back to the generic ``Session.run`` (graph
    extension check, fetch mapping and feed conversion in Python on every call, ~100 us); a
    callable made from ``CallableOptions`` runs the step directly. Feeds get the checks upstream's
    C++ ``Session::Run`` makes, and only those: the dtype must be the tensor's ("Expects arg[0]
    to be float but int32 is provided"; nothing is converted), the shape is left to the graph
    (half_plus_two's ``x`` declared ``[-1, 1]`` takes ``[3]`` and answers three values).
    """

    __slots__ = ("_callable", "_feeds", "_session")

    def __init__(
        self,
        session: Any,
        signature: Any,
        key: tuple[str, tuple[str, ...], tuple[str, ...]],
    ) -> None:
        _name, input_keys, output_keys = key
        graph = session.graph
        options = config_pb2.CallableOptions()
        feeds: list[tuple[str, np.dtype[Any], str]] = []
        for alias in input_keys:
            tensor = graph.get_tensor_by_name(signature.inputs[alias].name)
            if not graph.is_feedable(tensor):
                raise ValueError(f"Tensor {tensor.name} may not be fed.")
            dtype = np.dtype(tensor.dtype.as_numpy_dtype)
            feeds.append((alias, dtype, _tf_type_name(tensor.dtype.as_datatype_enum)))
            options.feed.append(tensor.name)
        for alias in output_keys:
            options.fetch.append(graph.get_tensor_by_name(signature.outputs[alias].name).name)
        self._session = session
        self._callable = session._make_callable_from_options(options)
        self._feeds = feeds

    def __call__(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        args = []
        for index, (alias, dtype, type_name) in enumerate(self._feeds):
            value = feeds[alias]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value, dtype)  # in-process callers passing lists
            elif value.dtype != dtype and not (
                dtype.kind == "O" and value.dtype.kind in _STRING_KINDS
            ):
                raise invalid_argument(
                    f"Expects arg[{index}] to be {type_name} but "
                    f"{_numpy_type_name(value.dtype)} is provided"
                )
            args.append(value)
        values: list[np.ndarray] = self._callable(*args)
        return values


_STRING_KINDS = frozenset("OSU")


def _tf_type_name(enum_value: int) -> str:
    """TensorFlow's DataTypeString: ``float``, ``int32``, ``half``, ``string``..."""
    name: str = types_pb2.DataType.Name(enum_value)
    return name.removeprefix("DT_").lower()


def _numpy_type_name(dtype: np.dtype[Any]) -> str:
    if dtype.kind in _STRING_KINDS:
        return "string"

    try:
        return _tf_type_name(tf.dtypes.as_dtype(dtype).as_datatype_enum)
    except TypeError:
        return str(dtype)


def check_inputs(signature: Any, inputs: Mapping[str, Any]) -> None:
    """Upstream's alias check: the request's inputs must be exactly the signature's inputs."""
    expected = set(signature.inputs)
    sent = set(inputs)
    if len(sent) != len(expected):
        extra = [shown(alias) for alias in sorted(sent - expected)]
        missing = sorted(expected - sent)
        named = [shown(alias) for alias in sorted(sent)]
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)}"
            f" len({{{','.join(named)}}}) != len({{{','.join(sorted(expected))}}})."
            f" Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )
    for alias in sorted(sent):
        if alias not in expected:
            raise invalid_argument(
                f"input tensor alias not found in signature: {shown(alias)}. Inputs expected to"
                f" be in the set {{{','.join(sorted(expected))}}}."
            )


def _single_string_input(signature: Any) -> str:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    alias: str = next(iter(signature.inputs))

    if signature.inputs[alias].dtype != types_pb2.DT_STRING:
        raise invalid_argument(
            f"Input tensor {alias} of the signature must be DT_STRING (serialized tf.Examples)."
        )
    return alias


def find_saved_model(path: str) -> None:
    """Upstream's NOT_FOUND when a version directory holds no SavedModel."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
        raise ServingError(
            Code.NOT_FOUND,
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{path}. Check that the directory exists and that you have the right permissions "
            "for accessing it.",
        )


def load_servable(name: str, version: int, path: str, options: SessionOptions) -> Servable:
    """Load ``path`` (one version directory) into a fresh session; errors as ``ServingError``."""
    find_saved_model(path)

    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=options.intra_op_parallelism,
        inter_op_parallelism_threads=options.inter_op_parallelism,
        allow_soft_placement=True,
    )
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)

    try:
        with deprecation.silence():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(options.tags), path)
    except Exception as exc:
        session.close()
        error = status_from_exception(exc)
        if error.code == Code.UNKNOWN:
            error = ServingError(
                Code.DATA_LOSS, f"Can't load SavedModel at {path}: {error.message}"
            )
        raise error from exc
    return Servable(name, version, path, session, meta_graph)


Loader = Callable[[str, int, str], Servable]
