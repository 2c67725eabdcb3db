"""The data plane REST and gRPC share: the servable a ModelSpec addresses, model status, model
metadata, and the one Predict path.

It knows neither HTTP nor gRPC; :mod:`modelserver.rest` and :mod:`modelserver.grpc_service` adapt
it (REST builds the ModelSpec from the URL, as upstream's HTTP handler does, and prints status
answers as JSON). Predict goes straight through the session, or through the shared batch scheduler
when the server batches (``--enable_batching``): the choice is made once, when the plane is built.
Before either, images in string inputs are checked against ``--max_image_pixels`` (headers only,
:mod:`modelserver.images`), so REST's ``{"b64": ...}`` and gRPC's ``string_val`` share the bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from modelserver.batched_predictor import BatchedPredictor
from modelserver.errors import invalid_argument, shown
from modelserver.images import DEFAULT_MAX_IMAGE_PIXELS, check_image_inputs
from modelserver.manager import ModelManager, VersionRecord
from modelserver.servable import DEFAULT_SIGNATURE, Servable

SIGNATURE_DEF_FIELD = "signature_def"
"""The only GetModelMetadata field upstream serves."""


def predict(
    servable: Servable,
    signature_name: str,
    inputs: Mapping[str, Any],
    output_filter: Sequence[str] = (),
    *,
    batcher: BatchedPredictor | None = None,
) -> dict[str, np.ndarray]:
    """Run a Predict: through ``batcher`` (merged with concurrent requests) when given, else
    straight through the servable's session."""
    if batcher is None:
        return servable.predict(signature_name, inputs, output_filter)
    return batcher.predict(servable, signature_name, inputs, output_filter)


def fill_model_spec(target: Any, servable: Servable, signature_name: str | None) -> None:
    """The resolved model spec upstream echoes: name, version and (for inference) signature."""
    target.name = servable.name
    target.version.value = servable.version
    if signature_name is not None:
        target.signature_name = signature_name or DEFAULT_SIGNATURE


class DataPlane:
    """Requests against the models of one manager; ``batcher`` is set when the server batches;
    ``max_image_pixels`` bounds the images a Predict's string inputs may decode to (0 = off)."""

    def __init__(
        self,
        manager: ModelManager,
        batcher: BatchedPredictor | None = None,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self.max_image_pixels = max_image_pixels

    @property
    def batching(self) -> bool:
        """Whether Predict waits for other requests (then it must never run on an event loop)."""
        return self.batcher is not None

    def resolve(self, spec: Any) -> Servable:
        """The servable a ModelSpec addresses: version, label, or latest."""
        kind = spec.WhichOneof("version_choice")
        if kind == "version":
            return self.manager.resolve(spec.name, version=spec.version.value)
        if kind == "version_label":
            return self.manager.resolve(spec.name, label=spec.version_label)
        return self.manager.resolve(spec.name)

    def serving(self, spec: Any) -> AbstractContextManager[Servable]:
        """Hold the servable a ModelSpec addresses for one request."""
        kind = spec.WhichOneof("version_choice")
        if kind == "version":
            return self.manager.serving(spec.name, version=spec.version.value)
        if kind == "version_label":
            return self.manager.serving(spec.name, label=spec.version_label)
        return self.manager.serving(spec.name)

    def predict(
        self,
        servable: Servable,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """:func:`predict` with this plane's batching choice, after the image bound."""
        check_image_inputs(inputs, self.max_image_pixels)
        return predict(servable, signature_name, inputs, output_filter, batcher=self.batcher)

    def model_status(self, spec: Any) -> Any:
        """GetModelStatusResponse for a ModelSpec."""
        if not spec.name:
            raise invalid_argument("Missing model name in request.")
        kind = spec.WhichOneof("version_choice")
        version: int | None = None
        if kind == "version":
            version = spec.version.value
        elif kind == "version_label":
            version = self.manager.label_version(spec.name, spec.version_label)
        response = get_model_status_pb2.GetModelStatusResponse()
        _fill_status(response, self.manager.status(spec.name, version))
        return response

    def model_metadata(self, spec: Any, fields: Sequence[str]) -> Any:
        """GetModelMetadataResponse (only the ``signature_def`` field exists upstream)."""
        if not fields:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in fields:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {shown(field)} is not supported")
        servable = self.resolve(spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        fill_model_spec(response.model_spec, servable, None)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
        return response

    def close(self) -> None:
        """Finish what the batch scheduler holds (nothing to do without batching)."""
        if self.batcher is not None:
            self.batcher.close()


def _fill_status(response: Any, records: list[VersionRecord]) -> None:
    for record in records:
        entry = response.model_version_status.add()
        entry.version = record.version
        entry.state = int(record.state)
        entry.status.SetInParent()
        if record.error is not None:
            entry.status.error_code = int(record.error.code)
            entry.status.error_message = record.error.message
