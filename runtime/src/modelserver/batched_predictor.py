"""Predict through the shared batch scheduler of :mod:`modelserver.batch_scheduler`.

One scheduler serves every model (upstream shares one). Requests are queued per (model, version,
signature, fetched outputs) so only compatible requests merge; each request gets its own rows back.
Queues of a version are flushed and forgotten when the version unloads.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from modelserver.batch_scheduler import BatchingOptions, BatchScheduler
from modelserver.servable import DEFAULT_SIGNATURE, Servable


class BatchedPredictor:
    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        self._keys: dict[tuple[str, int], set[Hashable]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str) -> BatchedPredictor:
        """``--batching_parameters_file`` (empty: upstream's default BatchingParameters)."""
        options = BatchingOptions.from_file(path) if path else BatchingOptions()
        return cls(BatchScheduler(options))

    def predict(
        self,
        servable: Servable,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        outputs = servable.prepare_predict(signature_name, inputs, output_filter)
        name = signature_name or DEFAULT_SIGNATURE
        key = (servable.name, servable.version, name, tuple(outputs))
        with self._lock:
            self._keys.setdefault((servable.name, servable.version), set()).add(key)

        def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return servable.run(name, batch, outputs)

        return dict(self.scheduler.run(key, inputs, run))

    def forget(self, name: str, version: int) -> None:
        """Flush and drop the queues of an unloaded version."""
        with self._lock:
            keys = self._keys.pop((name, version), set())
        for key in keys:
            self.scheduler.remove_queue(key)

    def close(self) -> None:
        self.scheduler.close(drain=True, timeout=10)
