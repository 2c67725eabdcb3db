"""Unit tests of modelserver.batch_scheduler: a real batching queue with TF Serving's parameters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from modelserver.batch_scheduler import BatchingConfigError, BatchingOptions, BatchScheduler
from modelserver.codec import Code, ServingError


class Model:
    """A batch function that records every batch and can hold the worker until released."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append({k: v.copy() for k, v in inputs.items()})
        self.entered.set()
        assert self.gate.wait(10), "test gate never released"
        x = inputs["x"]
        if (x < 0).any():
            raise ValueError(f"negative input in batch of {x.shape[0]}")
        return {"y": x * 2, "first": x[:, :1] if x.ndim > 1 else x}

    @property
    def sizes(self) -> list[int]:
        return [b["x"].shape[0] for b in self.batches]


@pytest.fixture
def scheduler_factory() -> Iterator:
    made: list[BatchScheduler] = []

    def make(**options: object) -> BatchScheduler:
        scheduler = BatchScheduler(BatchingOptions(**options))  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close(drain=False, timeout=5)


def submit_while_held(scheduler: BatchScheduler, model: Model, rows: list[np.ndarray], key="k"):
    """Occupy the single worker with a first request, queue `rows`, then release the worker."""
    first = scheduler.submit_future(key, {"x": np.array([100.0])}, model)
    assert model.entered.wait(5)
    futures = [scheduler.submit_future(key, {"x": row}, model) for row in rows]
    model.gate.set()
    assert first.result(5)["y"].tolist() == [200.0]
    return futures


# ----------------------------------------------------------------------------- options


def test_text_proto_parameters_are_read_with_upstream_field_names(tmp_path: Path) -> None:
    """A BatchingParameters text file sets every option; wrapper fields use `{ value: N }`."""
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 32 }\n"
        "batch_timeout_micros { value: 1000 }\n"
        "max_enqueued_batches { value: 4 }\n"
        "num_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 8\nallowed_batch_sizes: 16\nallowed_batch_sizes: 32\n"
        "pad_variable_length_inputs: true\n"
    )
    options = BatchingOptions.from_file(path)
    assert options == BatchingOptions(
        max_batch_size=32,
        batch_timeout_micros=1000,
        max_enqueued_batches=4,
        num_batch_threads=2,
        allowed_batch_sizes=(8, 16, 32),
        pad_variable_length_inputs=True,
    )
    assert [options.padded_size(n) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]


def test_omitted_parameters_keep_upstream_defaults() -> None:
    """An empty file means max_batch_size 1000, timeout 0, 10 enqueued batches."""
    options = BatchingOptions.from_text("")
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (
        1000,
        0,
        10,
    )
    assert options.num_batch_threads >= 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_size: 32", "Error parsing text-format tensorflow.serving.BatchingParameters"),
        ("max_batch_sise { value: 32 }", "Error parsing text-format"),
        (
            "max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
            "Last entry in allowed_batch_sizes must match max_batch_size",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4",
            "monotonically increasing",
        ),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
    ],
)
def test_invalid_parameters_are_refused_with_the_file_name(text: str, message: str) -> None:
    """Syntax errors and inconsistent values fail loading, naming the file."""
    with pytest.raises(BatchingConfigError, match=message) as info:
        BatchingOptions.from_text(text, source="/config/batching.config")
    assert "/config/batching.config" in str(info.value)


# ----------------------------------------------------------------------------- merging


def test_concurrent_requests_are_merged_into_one_batch(scheduler_factory) -> None:
    """Requests queued while the worker is busy run as one batch; each caller gets its rows."""
    scheduler = scheduler_factory(max_batch_size=16, num_batch_threads=1)
    model = Model(hold_first=True)
    rows = [np.array([float(i)]) for i in range(6)]
    futures = submit_while_held(scheduler, model, rows)
    results = [f.result(5)["y"].tolist() for f in futures]
    assert results == [[2.0 * i] for i in range(6)]
    assert model.sizes == [1, 6]


def test_many_threads_share_fewer_batches_than_requests(scheduler_factory) -> None:
    """32 threads submitting at once against a slow model need far fewer than 32 runs."""
    scheduler = scheduler_factory(max_batch_size=32, num_batch_threads=1, batch_timeout_micros=2000)
    calls = []

    def slow(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape[0])
        time.sleep(0.01)
        return {"y": inputs["x"] + 1}

    barrier = threading.Barrier(32)
    results: dict[int, list[float]] = {}

    def client(i: int) -> None:
        barrier.wait()
        results[i] = scheduler.run("k", {"x": np.array([float(i)])}, slow, timeout=10)["y"].tolist()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {i: [i + 1.0] for i in range(32)}
    assert sum(calls) == 32
    assert len(calls) < 16


def test_batches_never_exceed_max_batch_size(scheduler_factory) -> None:
    """Queued rows beyond max_batch_size go to the next batch."""
    scheduler = scheduler_factory(max_batch_size=4, num_batch_threads=1)
    model = Model(hold_first=True)
    futures = submit_while_held(scheduler, model, [np.array([1.0, 2.0, 3.0])] * 3)
    for f in futures:
        assert f.result(5)["y"].tolist() == [2.0, 4.0, 6.0]
    assert model.sizes == [1, 3, 3, 3]


def test_different_keys_never_share_a_batch(scheduler_factory) -> None:
    """Requests for two models (keys) are batched separately."""
    scheduler = scheduler_factory(max_batch_size=8, num_batch_threads=1)
    model = Model(hold_first=True)
    first = scheduler.submit_future("a", {"x": np.array([1.0])}, model)
    assert model.entered.wait(5)
    futures = [scheduler.submit_future(key, {"x": np.array([2.0])}, model) for key in "abab"]
    model.gate.set()
    first.result(5)
    assert [f.result(5)["y"].tolist() for f in futures] == [[4.0]] * 4
    assert sorted(model.sizes) == [1, 2, 2]


def test_requests_with_different_trailing_shapes_run_in_separate_batches(
    scheduler_factory,
) -> None:
    """Without padding, incompatible shapes never merge, and neither request fails."""
    scheduler = scheduler_factory(max_batch_size=8, num_batch_threads=1)
    model = Model(hold_first=True)
    rows = [np.ones((1, 2)), np.ones((1, 3)), np.ones((1, 2))]
    futures = submit_while_held(scheduler, model, rows)
    assert [f.result(5)["y"].shape for f in futures] == [(1, 2), (1, 3), (1, 2)]
    assert model.sizes == [1, 1, 1, 1]


# ----------------------------------------------------------------------------- timeout


def test_batch_timeout_holds_a_lone_request_until_it_expires(scheduler_factory) -> None:
    """A lone request waits batch_timeout_micros for company, then runs."""
    scheduler = scheduler_factory(max_batch_size=8, batch_timeout_micros=200_000)
    model = Model()
    started = time.monotonic()
    assert scheduler.run("k", {"x": np.array([1.0])}, model, timeout=5)["y"].tolist() == [2.0]
    assert time.monotonic() - started >= 0.19


def test_zero_timeout_runs_a_lone_request_at_once(scheduler_factory) -> None:
    """With batch_timeout_micros 0 an idle worker takes the request immediately."""
    scheduler = scheduler_factory(max_batch_size=8, batch_timeout_micros=0)
    started = time.monotonic()
    scheduler.run("k", {"x": np.array([1.0])}, Model(), timeout=5)
    assert time.monotonic() - started < 0.15


def test_a_full_batch_does_not_wait_for_the_timeout(scheduler_factory) -> None:
    """A batch that reaches max_batch_size runs without waiting for the (long) timeout."""
    scheduler = scheduler_factory(max_batch_size=2, batch_timeout_micros=30_000_000)
    model = Model()
    started = time.monotonic()
    futures = [scheduler.submit_future("k", {"x": np.array([float(i)])}, model) for i in (1, 2)]
    assert [f.result(5)["y"].tolist() for f in futures] == [[2.0], [4.0]]
    assert time.monotonic() - started < 2
    assert model.sizes == [2]


# ----------------------------------------------------------------------------- padding


def test_batches_are_padded_to_the_next_allowed_size(scheduler_factory) -> None:
    """3 rows run as 4 (copies of the last task's first row); callers get only their rows."""
    scheduler = scheduler_factory(
        max_batch_size=8, num_batch_threads=1, allowed_batch_sizes=(1, 4, 8)
    )
    model = Model(hold_first=True)
    futures = submit_while_held(
        scheduler, model, [np.array([1.0]), np.array([2.0]), np.array([3.0])]
    )
    assert [f.result(5)["y"].tolist() for f in futures] == [[2.0], [4.0], [6.0]]
    assert model.batches[1]["x"].tolist() == [1.0, 2.0, 3.0, 3.0]


def test_variable_length_inputs_are_padded_with_the_first_element(scheduler_factory) -> None:
    """pad_variable_length_inputs pads trailing dims to the batch maximum with x.flat[0]."""
    scheduler = scheduler_factory(
        max_batch_size=8, num_batch_threads=1, pad_variable_length_inputs=True
    )
    model = Model(hold_first=True)
    futures = submit_while_held(
        scheduler, model, [np.array([[7.0, 8.0]]), np.array([[1.0, 2.0, 3.0]])]
    )
    assert model.batches[1]["x"].tolist() == [[7.0, 8.0, 7.0], [1.0, 2.0, 3.0]]
    assert futures[0].result(5)["y"].tolist() == [[14.0, 16.0, 14.0]]
    assert futures[1].result(5)["y"].tolist() == [[2.0, 4.0, 6.0]]


# ----------------------------------------------------------------------------- limits


def test_tasks_larger_than_max_batch_size_are_refused(scheduler_factory) -> None:
    """Upstream's INVALID_ARGUMENT `Task size N is larger than maximum input batch size M`."""
    scheduler = scheduler_factory(max_batch_size=4)
    with pytest.raises(ServingError) as info:
        scheduler.submit_future("k", {"x": np.zeros(5)}, Model())
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == "Task size 5 is larger than maximum input batch size 4"


def test_large_batch_splitting_runs_a_task_in_execution_sized_pieces(scheduler_factory) -> None:
    """With splitting, a 10-row task runs in pieces of max_execution_batch_size, rows in order."""
    scheduler = scheduler_factory(
        max_batch_size=10,
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
        num_batch_threads=1,
    )
    model = Model()
    x = np.arange(10, dtype=np.float64)
    assert scheduler.run("k", {"x": x}, model, timeout=5)["y"].tolist() == (x * 2).tolist()
    assert sorted(model.sizes) == [2, 4, 4]


def test_a_full_queue_answers_unavailable(scheduler_factory) -> None:
    """Beyond max_enqueued_batches the caller gets UNAVAILABLE at once (upstream's code)."""
    scheduler = scheduler_factory(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1)
    model = Model(hold_first=True)
    first = scheduler.submit_future("k", {"x": np.array([1.0])}, model)
    assert model.entered.wait(5)
    queued = [scheduler.submit_future("k", {"x": np.array([2.0])}, model) for _ in range(2)]
    with pytest.raises(ServingError) as info:
        scheduler.submit_future("k", {"x": np.array([3.0])}, model)
    assert info.value.code is Code.UNAVAILABLE
    assert "batch scheduling queue to which this task was submitted is full" in info.value.message
    model.gate.set()
    assert [f.result(5)["y"].tolist() for f in [first, *queued]] == [[2.0], [4.0], [4.0]]


def test_inputs_must_share_a_batch_dimension(scheduler_factory) -> None:
    """Scalars, no inputs, or inputs with different dim 0 are INVALID_ARGUMENT."""
    scheduler = scheduler_factory()
    for inputs in ({}, {"x": np.float32(1)}, {"x": np.zeros(2), "z": np.zeros(3)}):
        with pytest.raises(ServingError) as info:
            scheduler.submit_future("k", inputs, Model())
        assert info.value.code is Code.INVALID_ARGUMENT


# ----------------------------------------------------------------------------- errors


def test_a_failing_request_does_not_fail_its_batch_neighbours(scheduler_factory) -> None:
    """When a merged batch fails, only the request that fails alone gets the error."""
    scheduler = scheduler_factory(max_batch_size=8, num_batch_threads=1)
    model = Model(hold_first=True)
    futures = submit_while_held(
        scheduler, model, [np.array([1.0]), np.array([-1.0]), np.array([3.0])]
    )
    assert futures[0].result(5)["y"].tolist() == [2.0]
    with pytest.raises(ValueError, match="negative input in batch of 1"):
        futures[1].result(5)
    assert futures[2].result(5)["y"].tolist() == [6.0]


def test_outputs_without_the_batch_dimension_are_failed_precondition(scheduler_factory) -> None:
    """A run function whose outputs lost the batch rows cannot be split: FAILED_PRECONDITION."""
    scheduler = scheduler_factory(max_batch_size=8)
    future = scheduler.submit_future("k", {"x": np.zeros(3)}, lambda inputs: {"y": np.zeros(2)})
    with pytest.raises(ServingError) as info:
        future.result(5)
    assert info.value.code is Code.FAILED_PRECONDITION


def test_cancelled_async_callers_are_skipped(scheduler_factory) -> None:
    """An asyncio caller that gave up before its batch ran is not computed."""
    scheduler = scheduler_factory(max_batch_size=8, num_batch_threads=1)
    model = Model(hold_first=True)

    async def scenario() -> list[float]:
        first = asyncio.ensure_future(scheduler.submit("k", {"x": np.array([1.0])}, model))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        doomed = asyncio.ensure_future(scheduler.submit("k", {"x": np.array([5.0])}, model))
        kept = asyncio.ensure_future(scheduler.submit("k", {"x": np.array([6.0])}, model))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        await first
        return (await kept)["y"].tolist()

    assert asyncio.run(scenario()) == [12.0]
    assert model.batches[1]["x"].tolist() == [6.0]


# ----------------------------------------------------------------------------- shutdown


def test_close_drains_queued_work_then_refuses_new_requests() -> None:
    """close(drain=True) finishes queued requests, joins the workers, then refuses work."""
    scheduler = BatchScheduler(
        BatchingOptions(batch_timeout_micros=60_000_000, num_batch_threads=2)
    )
    model = Model()
    future = scheduler.submit_future("k", {"x": np.array([1.0])}, model)
    scheduler.close(timeout=5)
    assert future.result(0)["y"].tolist() == [2.0]
    assert not any(t.is_alive() for t in scheduler._workers)
    with pytest.raises(ServingError) as info:
        scheduler.submit_future("k", {"x": np.array([1.0])}, model)
    assert info.value.code is Code.UNAVAILABLE


def test_close_without_drain_fails_queued_requests() -> None:
    """close(drain=False) answers queued callers UNAVAILABLE instead of running them."""
    scheduler = BatchScheduler(BatchingOptions(batch_timeout_micros=60_000_000))
    future = scheduler.submit_future("k", {"x": np.array([1.0])}, Model())
    scheduler.close(drain=False, timeout=5)
    with pytest.raises(ServingError) as info:
        future.result(0)
    assert info.value.code is Code.UNAVAILABLE


def test_remove_queue_flushes_a_waiting_batch(scheduler_factory) -> None:
    """Removing a key's queue (version unload) runs its waiting batch now."""
    scheduler = scheduler_factory(batch_timeout_micros=60_000_000)
    future = scheduler.submit_future(("m", 1, "serving_default"), {"x": np.array([2.0])}, Model())
    scheduler.remove_queue(("m", 1, "serving_default"))
    assert future.result(5)["y"].tolist() == [4.0]
