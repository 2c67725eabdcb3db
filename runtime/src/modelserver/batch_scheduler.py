"""Server-side batching across concurrent requests, honouring TF Serving's BatchingParameters.

Interface (for batched_predictor.py):

  ``options = BatchingOptions.from_file(path)`` (text proto ``BatchingParameters``, contract
      section 3) or ``BatchingOptions.from_text(text)`` / ``BatchingOptions()`` (upstream
      defaults, used by ``--enable_batching`` without a file). Invalid files raise
      ``BatchingConfigError``.
  ``scheduler = BatchScheduler(options)``: one for the whole server (upstream shares one scheduler
      and its ``num_batch_threads`` workers across all models), with one queue per ``key``.
  ``outputs = await scheduler.submit(key, inputs, run)``  (asyncio) or
  ``future = scheduler.submit_future(key, inputs, run)`` / ``scheduler.run(key, inputs, run)``
      (threads). ``key`` is any hashable, e.g. ``(model, version, signature)``; ``inputs`` maps
      input names to numpy arrays whose dim 0 is the batch; ``run(batched_inputs) -> outputs`` is
      called on a worker thread with the merged (and padded) batch and must return arrays whose
      dim 0 equals the merged batch size. Each caller gets its own rows of every output.
  ``scheduler.remove_queue(key)`` flushes a queue (e.g. when a version unloads);
  ``scheduler.close(drain=True)`` stops accepting work, finishes (or fails) what is queued and
      joins the workers.

Errors are ``errors.ServingError`` with upstream's codes and texts: a task larger than
``max_batch_size`` is INVALID_ARGUMENT ``Task size N is larger than maximum input batch size M``;
a full queue is UNAVAILABLE ``The batch scheduling queue to which this task was submitted is full``
(upstream uses UNAVAILABLE, not RESOURCE_EXHAUSTED). An exception raised by ``run`` reaches only
the callers of that batch: a failed batch of several requests is re-run one request at a time so
a single bad request cannot fail its neighbours.

Batches only merge requests whose inputs agree in names, dtypes and trailing dims (or ranks, with
``pad_variable_length_inputs``); a request that does not fit the open batch starts a new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from modelserver.errors import Code, ServingError

__all__ = [
    "BatchFunction",
    "BatchScheduler",
    "BatchingConfigError",
    "BatchingOptions",
]

Arrays = dict[str, np.ndarray]
BatchFunction = Callable[[Arrays], Mapping[str, np.ndarray]]


class BatchingConfigError(ValueError):
    """The batching parameters file cannot be parsed or is inconsistent."""


# --------------------------------------------------------------------------- options


def _batching_parameters_class() -> Any:
    """The BatchingParameters message class: TF Serving's own when installed, else the same schema.

    The pip ``tensorflow-serving-api`` wheel does not ship ``session_bundle_config_pb2``; then the
    message is declared here with upstream's field names, numbers and wrapper types so that the
    protobuf text parser accepts and rejects exactly what upstream does.
    """
    try:
        # Optional: only a TF Serving build ships this module (the pip wheel does not).
        from tensorflow_serving.servables.tensorflow import (  # noqa: PLC0415
            session_bundle_config_pb2,
        )

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    schema = descriptor_pb2.FileDescriptorProto(
        name="modelserver/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = schema.message_type.add(name="BatchingParameters")
    field_type = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
        ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ):
        message.field.add(
            name=name,
            number=number,
            type=field_type.TYPE_MESSAGE,
            label=field_type.LABEL_OPTIONAL,
            type_name=f".google.protobuf.{wrapper}",
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field_type.TYPE_INT64,
        label=field_type.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field_type.TYPE_BOOL,
        label=field_type.LABEL_OPTIONAL,
    )
    pool.Add(schema)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with upstream's defaults for every field left out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    thread_pool_name: str = "batch_threads"

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            problems.append(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                problems.append("allowed_batch_sizes entries must be monotonically increasing")
            elif sizes[-1] != self.execution_batch_size:
                which = (
                    "max_execution_batch_size"
                    if self.enable_large_batch_splitting
                    else "max_batch_size"
                )
                problems.append(
                    f"Last entry in allowed_batch_sizes must match {which}; last entry was "
                    f"{sizes[-1]}; expected {self.execution_batch_size}"
                )
        if self.execution_batch_size > self.max_batch_size or self.execution_batch_size < 1:
            problems.append(
                f"max_execution_batch_size must be between 1 and max_batch_size "
                f"({self.max_batch_size}), got {self.execution_batch_size}"
            )
        if problems:
            raise BatchingConfigError("; ".join(problems))

    @property
    def execution_batch_size(self) -> int:
        """The largest batch handed to the model (max_batch_size unless splitting is on)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, message: Any) -> BatchingOptions:
        """From a BatchingParameters message (unset wrapper fields keep upstream defaults)."""
        values: dict[str, Any] = {}
        for name in (
            "max_batch_size",
            "batch_timeout_micros",
            "max_enqueued_batches",
            "num_batch_threads",
            "thread_pool_name",
            "enable_large_batch_splitting",
            "max_execution_batch_size",
        ):
            if message.HasField(name):
                values[name] = getattr(message, name).value
        values["allowed_batch_sizes"] = tuple(int(v) for v in message.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = bool(message.pad_variable_length_inputs)
        return cls(**values)

    @classmethod
    def from_text(cls, text: str, *, source: str = "<batching parameters>") -> BatchingOptions:
        """Parse a ``BatchingParameters`` text proto, e.g. ``max_batch_size { value: 32 }``."""
        message = _batching_parameters_class()()
        try:
            text_format.Parse(text, message)
        except text_format.ParseError as exc:
            raise BatchingConfigError(
                f"{source}: Error parsing text-format tensorflow.serving.BatchingParameters: {exc}"
            ) from None
        try:
            return cls.from_proto(message)
        except BatchingConfigError as exc:
            raise BatchingConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BatchingOptions:
        """Read ``--batching_parameters_file``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise BatchingConfigError(
                f"cannot read batching parameters file {path}: {exc}"
            ) from exc
        return cls.from_text(text, source=str(path))

    def padded_size(self, size: int) -> int:
        """The smallest allowed batch size >= size (size itself without allowed_batch_sizes)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


# --------------------------------------------------------------------------- tasks and batches


class _Request:
    """What one caller submitted; completes its future when all of its pieces are done."""

    def __init__(self, future: concurrent.futures.Future[Arrays], pieces: int) -> None:
        self.future = future
        self.remaining = pieces
        self.parts: dict[int, Arrays] = {}
        self.failed = False
        self.running = False
        self.lock = threading.Lock()

    def started(self) -> bool:
        """False when the caller gave up (cancelled) or another piece already failed."""
        with self.lock:
            if self.failed:
                return False
            if not self.running:
                self.running = self.future.set_running_or_notify_cancel()
                self.failed = not self.running
            return self.running

    def piece_done(self, index: int, outputs: Arrays) -> None:
        with self.lock:
            if self.failed:
                return
            self.parts[index] = outputs
            self.remaining -= 1
            if self.remaining:
                return
            if len(self.parts) == 1:
                result = self.parts[0]
            else:
                ordered = [self.parts[i] for i in sorted(self.parts)]
                result = {k: np.concatenate([p[k] for p in ordered]) for k in ordered[0]}
        self.future.set_result(result)

    def piece_failed(self, error: BaseException) -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        if not self.future.done():
            self.future.set_exception(error)


@dataclass
class _Task:
    request: _Request
    index: int  # position of this piece within the request
    inputs: Arrays
    size: int


@dataclass
class _Batch:
    signature: tuple[Any, ...]
    run: BatchFunction
    start: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0


class _Queue:
    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.closed: deque[_Batch] = deque()
        self.open: _Batch | None = None
        self.flushing = False

    def batch_count(self) -> int:
        return len(self.closed) + (1 if self.open is not None else 0)

    def empty(self) -> bool:
        return not self.closed and self.open is None


def _task_size(inputs: Mapping[str, np.ndarray]) -> int:
    """dim 0 shared by every input (upstream ComputeTensorBatchSize), with upstream's errors."""
    if not inputs:
        raise ServingError(
            Code.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor"
        )
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise ServingError(
                Code.INVALID_ARGUMENT, "Batching Run() input tensors must be at least rank 1"
            )
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise ServingError(
            Code.INVALID_ARGUMENT,
            "Batching Run() input tensors must have equal 0th-dimension size",
        )
    return int(sizes.pop())


# --------------------------------------------------------------------------- the scheduler


class BatchScheduler:
    """Merges concurrent requests per key into batches run on ``num_batch_threads`` workers."""

    def __init__(self, options: BatchingOptions | None = None) -> None:
        self.options = options or BatchingOptions()
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._closing = False
        self._batches_run = 0
        self._workers = [
            threading.Thread(
                target=self._work, name=f"{self.options.thread_pool_name}-{i}", daemon=True
            )
            for i in range(self.options.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    # ----------------------------------------------------------------- submitting

    async def submit(
        self, key: Hashable, inputs: Mapping[str, np.ndarray], run: BatchFunction
    ) -> Arrays:
        """Queue ``inputs`` for batching and await this caller's rows of the outputs."""
        return await asyncio.wrap_future(self.submit_future(key, inputs, run))

    def run(
        self,
        key: Hashable,
        inputs: Mapping[str, np.ndarray],
        run: BatchFunction,
        timeout: float | None = None,
    ) -> Arrays:
        """Blocking form of :meth:`submit` for threads (e.g. gRPC handlers)."""
        return self.submit_future(key, inputs, run).result(timeout)

    def submit_future(
        self, key: Hashable, inputs: Mapping[str, np.ndarray], run: BatchFunction
    ) -> concurrent.futures.Future[Arrays]:
        """Queue ``inputs``; the future resolves to this caller's outputs (or the error)."""
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        size = _task_size(arrays)
        options = self.options
        if size > options.max_batch_size:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Task size {size} is larger than maximum input batch size "
                f"{options.max_batch_size}",
            )
        signature = self._signature(arrays)
        future: concurrent.futures.Future[Arrays] = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise ServingError(Code.UNAVAILABLE, "The batch scheduler is shutting down")
            queue = self._queues.get(key)
            if queue is None or queue.flushing:
                queue = self._queues[key] = _Queue(key)
            if size == 0:
                self._enqueue_alone(queue, signature, run, _Task(_Request(future, 1), 0, arrays, 0))
            elif options.enable_large_batch_splitting:
                self._enqueue_split(
                    queue, signature=signature, run=run, future=future, arrays=arrays, size=size
                )
            else:
                self._enqueue_whole(
                    queue, signature=signature, run=run, future=future, arrays=arrays, size=size
                )
            self._cond.notify_all()
        return future

    def _signature(self, arrays: Arrays) -> tuple[Any, ...]:
        pad = self.options.pad_variable_length_inputs
        return tuple(
            (name, array.dtype.str, array.ndim if pad else array.shape[1:])
            for name, array in sorted(arrays.items())
        )

    def _queue_full(self, queue: _Queue, detail: str) -> ServingError:
        return ServingError(
            Code.UNAVAILABLE,
            "The batch scheduling queue to which this task was submitted is full; "
            f"{detail} and max_enqueued_batches is {self.options.max_enqueued_batches}",
        )

    def _new_open_batch(
        self, queue: _Queue, signature: tuple[Any, ...], run: BatchFunction
    ) -> _Batch:
        if queue.open is not None:
            queue.closed.append(queue.open)
        queue.open = _Batch(signature, run, time.monotonic())
        return queue.open

    def _fits(self, batch: _Batch | None, signature: tuple[Any, ...], size: int) -> bool:
        return (
            batch is not None
            and batch.signature == signature
            and batch.size + size <= self.options.execution_batch_size
        )

    def _enqueue_whole(
        self,
        queue: _Queue,
        *,
        signature: tuple[Any, ...],
        run: BatchFunction,
        future: concurrent.futures.Future[Arrays],
        arrays: Arrays,
        size: int,
    ) -> None:
        batch = queue.open
        if not self._fits(batch, signature, size):
            if queue.batch_count() >= self.options.max_enqueued_batches:
                raise self._queue_full(queue, f"currently {queue.batch_count()} batches enqueued")
            batch = self._new_open_batch(queue, signature, run)
        assert batch is not None
        batch.tasks.append(_Task(_Request(future, 1), 0, arrays, size))
        batch.size += size
        self._close_if_full(queue)

    def _enqueue_split(
        self,
        queue: _Queue,
        *,
        signature: tuple[Any, ...],
        run: BatchFunction,
        future: concurrent.futures.Future[Arrays],
        arrays: Arrays,
        size: int,
    ) -> None:
        limit = self.options.execution_batch_size
        open_batch = queue.open
        open_room = (
            limit - open_batch.size
            if open_batch is not None and open_batch.signature == signature
            else 0
        )
        new_batches = self.options.max_enqueued_batches - queue.batch_count()
        capacity = new_batches * limit + open_room
        if size > capacity:
            raise self._queue_full(
                queue, f"task size is {size} but scheduling capacity is only {capacity}"
            )
        bounds = []
        start = 0
        first = min(open_room, size)
        if first:
            bounds.append((start, first))
            start = first
        while start < size:
            bounds.append((start, min(start + limit, size)))
            start = bounds[-1][1]
        request = _Request(future, len(bounds))
        for index, (low, high) in enumerate(bounds):
            piece = {name: array[low:high] for name, array in arrays.items()}
            batch = queue.open
            if not self._fits(batch, signature, high - low):
                batch = self._new_open_batch(queue, signature, run)
            assert batch is not None
            batch.tasks.append(_Task(request, index, piece, high - low))
            batch.size += high - low
            self._close_if_full(queue)

    def _enqueue_alone(
        self, queue: _Queue, signature: tuple[Any, ...], run: BatchFunction, task: _Task
    ) -> None:
        if queue.batch_count() >= self.options.max_enqueued_batches:
            raise self._queue_full(queue, f"currently {queue.batch_count()} batches enqueued")
        batch = self._new_open_batch(queue, signature, run)
        batch.tasks.append(task)
        queue.closed.append(batch)
        queue.open = None

    def _close_if_full(self, queue: _Queue) -> None:
        if queue.open is not None and queue.open.size >= self.options.execution_batch_size:
            queue.closed.append(queue.open)
            queue.open = None

    # ----------------------------------------------------------------- queues and shutdown

    def remove_queue(self, key: Hashable) -> None:
        """Run what is queued for ``key`` now and forget the queue once it is empty."""
        with self._cond:
            queue = self._queues.get(key)
            if queue is not None:
                queue.flushing = True
                if queue.empty():
                    del self._queues[key]
                self._cond.notify_all()

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; run (``drain``) or fail what is queued; join the workers."""
        with self._cond:
            self._closing = True
            if not drain:
                error = ServingError(Code.UNAVAILABLE, "The batch scheduler was shut down")
                for queue in self._queues.values():
                    batches = list(queue.closed) + ([queue.open] if queue.open else [])
                    for batch in batches:
                        for task in batch.tasks:
                            task.request.piece_failed(error)
                    queue.closed.clear()
                    queue.open = None
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            worker.join(remaining)

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def batches_run(self) -> int:
        """How many batches the workers have handed to a ``run`` function (for tests/metrics)."""
        return self._batches_run

    # ----------------------------------------------------------------- workers

    def _next_batch(self, now: float) -> tuple[_Batch | None, float | None]:
        """The schedulable batch with the earliest start, or how long until one may be."""
        timeout = self.options.batch_timeout_micros / 1e6
        best: tuple[float, _Queue, bool] | None = None
        wait: float | None = None
        for queue in self._queues.values():
            if queue.closed:
                candidate = (queue.closed[0].start, queue, True)
            elif queue.open is not None:
                due = queue.open.start + timeout
                if not (self._closing or queue.flushing or due <= now):
                    wait = due - now if wait is None else min(wait, due - now)
                    continue
                candidate = (queue.open.start, queue, False)
            else:
                continue
            if best is None or candidate[0] < best[0]:
                best = candidate
        if best is None:
            return None, wait
        _, queue, from_closed = best
        if from_closed:
            batch = queue.closed.popleft()
        else:
            assert queue.open is not None
            batch, queue.open = queue.open, None
        if queue.flushing and queue.empty() and self._queues.get(queue.key) is queue:
            del self._queues[queue.key]
        return batch, None

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, wait = self._next_batch(time.monotonic())
                    if batch is not None:
                        break
                    if self._closing and all(q.empty() for q in self._queues.values()):
                        return
                    self._cond.wait(wait)
                self._batches_run += 1
            self._process(batch)

    def _process(self, batch: _Batch) -> None:
        tasks = [task for task in batch.tasks if task.request.started()]
        if not tasks:
            return
        try:
            outputs = self._run_merged(batch.run, tasks)
        except Exception as error:  # delivered to the callers of this batch
            if len(tasks) == 1:
                tasks[0].request.piece_failed(error)
                return
            # Isolate the failure: only the requests that fail on their own get the error.
            for task in tasks:
                try:
                    single = self._run_merged(batch.run, [task])
                except Exception as own_error:
                    task.request.piece_failed(own_error)
                else:
                    task.request.piece_done(task.index, single[0])
            return
        for task, rows in zip(tasks, outputs, strict=True):
            task.request.piece_done(task.index, rows)

    def _run_merged(self, run: BatchFunction, tasks: list[_Task]) -> list[Arrays]:
        size = sum(task.size for task in tasks)
        padded = self.options.padded_size(size)
        merged = _merge_inputs(tasks, padded - size, self.options.pad_variable_length_inputs)
        outputs = run(merged)
        return _split_outputs(outputs, [task.size for task in tasks], padded)


def _merge_inputs(tasks: list[_Task], padding_rows: int, pad_variable_length: bool) -> Arrays:
    names = list(tasks[0].inputs)
    merged: Arrays = {}
    for name in names:
        parts = [task.inputs[name] for task in tasks]
        if pad_variable_length:
            parts = _pad_to_max_dims(name, parts)
        if padding_rows:
            # Upstream pads with copies of the first row of the last task's tensor.
            parts.append(np.repeat(parts[-1][:1], padding_rows, axis=0))
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return merged


def _pad_to_max_dims(name: str, parts: list[np.ndarray]) -> list[np.ndarray]:
    target = tuple(max(dims) for dims in zip(*(p.shape for p in parts), strict=True))
    padded = []
    for part in parts:
        if part.shape[1:] == target[1:]:
            padded.append(part)
            continue
        if part.size == 0:
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Cannot pad input '{name}': it is empty, and upstream pads with its first element",
            )
        out = np.full((part.shape[0], *target[1:]), part.flat[0], dtype=part.dtype)
        out[tuple(slice(0, d) for d in part.shape)] = part
        padded.append(out)
    return padded


def _split_outputs(
    outputs: Mapping[str, np.ndarray], sizes: list[int], padded: int
) -> list[Arrays]:
    per_task: list[Arrays] = [{} for _ in sizes]
    offsets = list(itertools.accumulate(sizes))[:-1]
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0:
            raise ServingError(
                Code.FAILED_PRECONDITION, f"Batched output tensor '{name}' has 0 dimensions"
            )
        if array.shape[0] != padded:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"Batched output tensor '{name}' 0th dimension ({array.shape[0]}) does not equal "
                f"the sum of the 0th dimension sizes of the input tensors ({padded})",
            )
        pieces = np.split(array[: sum(sizes)], offsets)
        for target, piece in zip(per_task, pieces, strict=True):
            target[name] = piece
    return per_task
