"""``TFServingContainer``: a TensorFlow Serving container for tests, ready when its models are."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from tfstack.docker.containers import READY_TIMEOUT_S, ServingContainer
from tfstack.serving.client import GrpcClient, ModelRef, RestClient
from tfstack.testing.cleanup import remove_stale, session_labels

IMAGE_ENV = "TFSTACK_SERVING_IMAGE"
"""Environment variable that overrides the image of every :class:`TFServingContainer`."""
DEFAULT_IMAGE = "tfstack/serving-runtime:latest"
"""tfstack's drop-in runtime image (``./tfstack images`` builds it); tensorflow/serving works."""


def serving_image(image: str | None = None) -> str:
    """``$TFSTACK_SERVING_IMAGE`` if set, else ``image``, else tfstack's runtime image."""
    return os.environ.get(IMAGE_ENV) or image or DEFAULT_IMAGE


class ServingCalls:
    """predict / classify / regress / metadata over a REST and a gRPC client (shared by the
    container and the stack handle)."""

    _rest: RestClient | None = None
    _grpc: GrpcClient | None = None

    if TYPE_CHECKING:  # provided by the class this is mixed into; not defined here at run time

        @property
        def rest_url(self) -> str: ...

        @property
        def grpc_target(self) -> str: ...

    @property
    def rest(self) -> RestClient:
        """A REST client (created on first use, closed by :meth:`close_clients`)."""
        if self._rest is None:
            self._rest = RestClient(self.rest_url)
        return self._rest

    @property
    def grpc(self) -> GrpcClient:
        """A gRPC client (created on first use, closed by :meth:`close_clients`)."""
        if self._grpc is None:
            self._grpc = GrpcClient(self.grpc_target)
        return self._grpc

    def close_clients(self) -> None:
        if self._rest is not None:
            self._rest.close()
            self._rest = None
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    # -- calls ------------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        instances: Sequence[Any] | None = None,
        *,
        inputs: Any = None,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = None,
        grpc: bool = False,
    ) -> Any:
        """Predict: ``instances`` (row format) or ``inputs`` (columnar); returns the answer's
        ``predictions`` (row format) or ``outputs`` (columnar), over REST or gRPC."""
        body = _predict_body(instances, inputs)
        ref = ModelRef(model, version=version, label=label)
        if grpc:
            answer = self.grpc.predict_json(ref, body, signature=signature)
        else:
            answer = self.rest.predict(ref, body, signature=signature)
        return answer["predictions"] if "instances" in body else answer["outputs"]

    def classify(
        self,
        model: str,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        version: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Classify ``examples`` (tf.Example features as JSON) over REST; returns ``results``."""
        return self._example_call(
            "classify", model, examples, context, version=version, signature=signature
        )

    def regress(
        self,
        model: str,
        examples: Sequence[Mapping[str, Any]],
        *,
        context: Mapping[str, Any] | None = None,
        version: int | None = None,
        signature: str | None = None,
    ) -> Any:
        """Regress ``examples`` (tf.Example features as JSON) over REST; returns ``results``."""
        return self._example_call(
            "regress", model, examples, context, version=version, signature=signature
        )

    def metadata(self, model: str, *, version: int | None = None, grpc: bool = False) -> Any:
        """The model's metadata (signature defs), in the REST JSON shape either way."""
        ref = ModelRef(model, version=version)
        return self.grpc.metadata(ref) if grpc else self.rest.metadata(ref)

    def _example_call(
        self,
        method: Literal["classify", "regress"],
        model: str,
        examples: Sequence[Mapping[str, Any]],
        context: Mapping[str, Any] | None,
        *,
        version: int | None,
        signature: str | None,
    ) -> Any:
        body: dict[str, Any] = {"examples": list(examples)}
        if context is not None:
            body["context"] = dict(context)
        answer = self.rest.predict(
            ModelRef(model, version=version), body, method=method, signature=signature
        )
        return answer["results"]


class TFServingContainer(ServingCalls, ServingContainer):
    """A temporary TensorFlow Serving container, ready once every model version is AVAILABLE.

    Example::

        from tfstack.testing import TFServingContainer

        with TFServingContainer(models={"half_plus_two": "models/half_plus_two"}) as serving:
            assert serving.predict("half_plus_two", [1.0, 2.0]) == [2.5, 3.0]
            assert serving.predict("half_plus_two", [1.0], grpc=True) == [2.5]

    Args:
        image: the serving image; ``tensorflow/serving:<tag>`` or tfstack's runtime image (the
            default). ``$TFSTACK_SERVING_IMAGE`` overrides it.
        models: model name -> host folder holding numbered versions (``1/saved_model.pb``);
            mounted read-only at ``/models/<name>`` and served at their latest version.
        model_config: a ``models.config`` text used instead of the generated one (base paths are
            container paths, ``/models/<name>`` for the ``models`` mounts).
        batching: a batching-parameters text; turns server-side batching on.
        expected_versions: model -> versions to wait for (default: the latest on disk, or every
            version the server reports for ``model_config``-only models).
        flags: extra ``tensorflow_model_server`` flags (appended, so they win).
        env, labels: container environment and extra ``org.tfstack.*`` labels.
        startup_timeout: seconds to wait for the models.
        docker_kwargs: passed to the docker SDK (``cpu_shares``, ``mem_limit``, ``user``...).

    Raises:
        tfstack.UsageError: bad input (e.g. a model folder without a SavedModel), before any
            container starts.
        tfstack.StackError: the image is missing, the server exited, a version failed to load or
            the models were not AVAILABLE in time (with the server's last log lines).
    """

    stale_swept: ClassVar[bool] = False  # crashed runs' containers go once per process

    def __init__(
        self,
        image: str | None = None,
        *,
        models: Mapping[str, str | Path] | None = None,
        model_config: str | None = None,
        batching: str | None = None,
        expected_versions: Mapping[str, Sequence[int]] | None = None,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        startup_timeout: float = READY_TIMEOUT_S,
        **docker_kwargs: Any,
    ) -> None:
        super().__init__(
            serving_image(image),
            models=models,
            model_config=model_config,
            batching=batching,
            expected_versions=expected_versions,
            flags=flags,
            env=env,
            labels=dict(labels or {}) | session_labels(),
            startup_timeout=startup_timeout,
            **docker_kwargs,
        )

    def start(self) -> TFServingContainer:
        """Start the container and wait for its models (after sweeping crashed runs' leftovers)."""
        if not TFServingContainer.stale_swept:
            remove_stale(self.get_docker_client().client)
            TFServingContainer.stale_swept = True
        super().start()
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        self.close_clients()
        super().stop(force=force, delete_volume=delete_volume)


def _predict_body(instances: Sequence[Any] | None, inputs: Any) -> dict[str, Any]:
    if (instances is None) == (inputs is None):
        from_usage = "give exactly one of instances=[...] (row format) or inputs=... (columnar)"
        raise TypeError(f"predict: {from_usage}")
    return {"instances": list(instances)} if instances is not None else {"inputs": inputs}
