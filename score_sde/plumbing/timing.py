"""Compile time kept apart from run time, for every output the CLI writes.

    with timing.Timer() as t:
        x = jax.block_until_ready(sampler(key, sde, score_fn, shape))
    t.compile_seconds, t.run_seconds, t.total_seconds

JAX reports the time it spends tracing, lowering and compiling through `jax.monitoring` events
(`/jax/core/compile/jaxpr_trace_duration`, `jaxpr_to_mlir_module_duration`,
`backend_compile_duration`). A `Timer` takes each event that ends while it is open (from any
thread, e.g. a compilation inside `pmap` or `eqx.filter_jit`) as the interval [end - duration,
end] and counts the length of the union of those intervals, so nested traces (a jit traced inside
a jit) and concurrent compilations are counted once; `run_seconds` is the wall time minus that.
A second call of an already compiled function reports no event.
"""

from __future__ import annotations

import threading
import time

import jax

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

_lock = threading.Lock()
_open: list["Timer"] = []
_registered = False


def _listener(event: str, duration: float, **kwargs) -> None:
    if event in COMPILE_EVENTS and _open:
        end = time.perf_counter()
        with _lock:
            for timer in _open:
                timer._intervals.append((end - float(duration), end))


def _register() -> None:
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _registered = True


class Timer:
    """Wall time of a block, split into compile (tracing + lowering + XLA) and run seconds.

    Attributes (after the block; `split()` gives them while it is open):
      compile_seconds, run_seconds, total_seconds.
    """

    def __init__(self):
        _register()
        self._intervals: list[tuple[float, float]] = []
        self._t0, self._t1 = None, None

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        with _lock:
            _open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self._t1 = time.perf_counter()
        with _lock:
            _open.remove(self)

    @property
    def total_seconds(self) -> float:
        end = self._t1 if self._t1 is not None else time.perf_counter()
        return end - self._t0

    @property
    def compile_seconds(self) -> float:
        """Length of the union of the compile events' intervals, within the timed block."""
        end = self._t1 if self._t1 is not None else time.perf_counter()
        with _lock:
            spans = sorted((max(a, self._t0), min(b, end)) for a, b in self._intervals)
        total, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if b <= a:
                continue
            if cur_b is None or a > cur_b:
                total += (cur_b - cur_a) if cur_b is not None else 0.0
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        total += (cur_b - cur_a) if cur_b is not None else 0.0
        return min(total, self.total_seconds)

    @property
    def run_seconds(self) -> float:
        return max(self.total_seconds - self.compile_seconds, 0.0)

    def fields(self) -> dict:
        """{"compile_seconds", "run_seconds"} rounded to milliseconds, for a JSON summary."""
        return {"compile_seconds": round(self.compile_seconds, 3), "run_seconds": round(self.run_seconds, 3)}


__all__ = ["COMPILE_EVENTS", "Timer"]
