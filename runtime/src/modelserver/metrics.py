"""Prometheus metrics with upstream's names, in the text exposition format.

* ``:tensorflow:serving:request_count{model_name,status}`` counter (status is ``OK`` or the TF
  code name);
* ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` histogram in microseconds
  (upstream's exponential buckets: 10 µs * 1.8^k);
* ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}`` counter and
  ``:tensorflow:cc:saved_model:load_latency{model_path}`` (total microseconds).

Cardinality is bounded: a request names its model, and a client may send any name, so request
series exist only for models the server knows (``known_model``, the configured ones), with label
values at most ``MAX_LABEL_CHARS`` long, and at most ``MAX_MODELS`` models. Requests for unknown
models are answered as usual but leave no series (upstream adds one per name, unbounded).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"

INF_BUCKET = 'le="+Inf"'
BUCKETS: tuple[float, ...] = tuple(10 * 1.8**k for k in range(33))
MAX_LABEL_CHARS = 256
MAX_MODELS = 1000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Thread-safe counters and histograms; ``enabled`` False makes recording a no-op."""

    def __init__(
        self, enabled: bool = True, known_model: Callable[[str], bool] | None = None
    ) -> None:
        self.enabled = enabled
        self.known_model: Callable[[str], bool] = known_model or (lambda name: True)
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str, str], list[float]] = {}
        self._loads: dict[tuple[str, str], int] = defaultdict(int)
        self._load_latency: dict[str, float] = defaultdict(float)

    def record_request(
        self, model_name: str, api: str, entrypoint: str, status: str, micros: float
    ) -> None:
        if not self.enabled or not self._admit(model_name):
            return
        with self._lock:
            self._requests[(model_name, status)] += 1
            key = (model_name, api, entrypoint)
            cells = self._latency.get(key)
            if cells is None:
                cells = self._latency[key] = [0.0] * (len(BUCKETS) + 3)
            cells[bisect.bisect_left(BUCKETS, micros)] += 1
            cells[-2] += micros
            cells[-1] += 1

    def _admit(self, model_name: str) -> bool:
        """Whether requests for ``model_name`` may have series (see the module docstring)."""
        if model_name in self._models:
            return True
        if (
            not model_name
            or len(model_name) > MAX_LABEL_CHARS
            or len(self._models) >= MAX_MODELS
            or not self.known_model(model_name)
        ):
            return False
        with self._lock:
            self._models.add(model_name)
        return True

    def record_load(self, model_path: str, ok: bool, micros: float) -> None:
        if len(model_path) > MAX_LABEL_CHARS:
            model_path = model_path[: MAX_LABEL_CHARS - 3] + "..."
        with self._lock:
            self._loads[(model_path, "success" if ok else "fail")] += 1
            self._load_latency[model_path] += micros

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        out: list[str] = []
        with self._lock:
            out.append(f"# TYPE {REQUEST_COUNT} counter")
            for (model, status), count in sorted(self._requests.items()):
                labels = _labels(("model_name", "status"), (model, status))
                out.append(f"{REQUEST_COUNT}{labels} {count}")
            out.append(f"# TYPE {REQUEST_LATENCY} histogram")
            names = ("model_name", "API", "entrypoint")
            for key, cells in sorted(self._latency.items()):
                cumulative: float = 0.0
                for bound, in_bucket in zip(BUCKETS, cells, strict=False):
                    cumulative += in_bucket
                    labels = _labels(names, key, f'le="{_number(bound)}"')
                    out.append(f"{REQUEST_LATENCY}_bucket{labels} {_number(cumulative)}")
                cumulative += cells[len(BUCKETS)]
                labels = _labels(names, key, INF_BUCKET)
                out.append(f"{REQUEST_LATENCY}_bucket{labels} {_number(cumulative)}")
                out.append(f"{REQUEST_LATENCY}_sum{_labels(names, key)} {_number(cells[-2])}")
                out.append(f"{REQUEST_LATENCY}_count{_labels(names, key)} {_number(cells[-1])}")
            out.append(f"# TYPE {LOAD_ATTEMPTS} counter")
            for (path, status), count in sorted(self._loads.items()):
                labels = _labels(("model_path", "status"), (path, status))
                out.append(f"{LOAD_ATTEMPTS}{labels} {count}")
            out.append(f"# TYPE {LOAD_LATENCY} counter")
            for path, micros in sorted(self._load_latency.items()):
                out.append(f"{LOAD_LATENCY}{_labels(('model_path',), (path,))} {_number(micros)}")
        return "\n".join(out) + "\n"
