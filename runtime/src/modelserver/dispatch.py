"""Where a request's handler runs: on the event loop (cheap handlers) or in the inference pool.

A thread hop costs tens of microseconds and, with many requests in flight on one core, the pool's
threads compete with the event loop for the GIL and the CPU. Handlers that are known to be cheap
(a tiny model such as half_plus_two: well under a millisecond from JSON to JSON) therefore run
inline on the loop; everything else, and anything not yet measured, goes to the pool.

"Known to be cheap" is learnt per key (API and model) from successful runs: the estimate follows
the fastest recent run (a run slowed by contention does not raise it much; it creeps up 5% per
run) and jumps straight to any run above :data:`HEAVY_FACTOR` times the limit, so a model that
turns heavy (a new version, a larger input) leaves the loop after one such run. Bodies above
:data:`INLINE_MAX_BODY` never run inline. Callers that wait on other requests (server-side
batching) must not use the inline path at all.

Model warmup teaches the policy too (:meth:`InlinePolicy.note` from the server's loader with the
warm cost of each replayed record), so the first real request of a cheap model already runs
inline; a heavy warmup run takes the key off the loop before the version serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")

INLINE_MAX_SECONDS = 0.0005
"""Handlers estimated below this run on the event loop."""
INLINE_MAX_BODY = 16 << 10
"""Requests larger than this (bytes) always go to the pool."""
HEAVY_FACTOR = 4.0
CREEP = 1.05


class InlinePolicy:
    """Per-key cost estimates and the inline decision (thread-safe enough: single dict writes)."""

    def __init__(self, *, enabled: bool = True, max_seconds: float | None = None) -> None:
        self.enabled = enabled
        self.max_seconds = INLINE_MAX_SECONDS if max_seconds is None else max_seconds
        self._costs: dict[Hashable, float] = {}

    def inline(self, key: Hashable, size: int) -> bool:
        """Whether a request of ``size`` bytes for ``key`` should run on the event loop."""
        if not self.enabled or size > INLINE_MAX_BODY:
            return False
        cost = self._costs.get(key)
        return cost is not None and cost < self.max_seconds

    def note(self, key: Hashable, seconds: float) -> None:
        """Record one successful run of ``key``'s handler."""
        previous = self._costs.get(key)
        if previous is None or seconds > HEAVY_FACTOR * self.max_seconds:
            self._costs[key] = seconds
        else:
            self._costs[key] = min(seconds, previous * CREEP)

    def run_inline(self, key: Hashable, work: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = work()
        self.note(key, time.perf_counter() - started)
        return result

    def timed(self, key: Hashable, work: Callable[[], T]) -> Callable[[], T]:
        """``work`` measuring itself (for runs in the pool)."""

        def run() -> T:
            started = time.perf_counter()
            result = work()
            self.note(key, time.perf_counter() - started)
            return result

        return run
