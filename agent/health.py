"""Watches a freshly swapped-in model version for a while, and compares it with the version it replaces, so a bad
model is rolled back before it does harm: errors, NaN/Inf outputs, or a latency regression on the same backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.timing import turn_about

if TYPE_CHECKING:
    from agent.serving import LoadedModel

BENCH_RUNS = 30
MIN_REGRESSION_MS = 0.5  # below this the difference is noise, whatever the percentage


def nonfinite_output(outputs: dict[str, Any]) -> str | None:
    """Name the first floating-point output holding NaN or Inf."""
    import numpy as np

    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"output {name!r} holds NaN/Inf"
    return None


class HealthWatch:
    """Counts what real requests to the new version show during `window_s`; `problem` says why it is unhealthy."""

    def __init__(self, window_s: float, max_errors: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.until = clock() + window_s
        self.max_errors = max_errors
        self.requests = 0
        self.errors = 0
        self.problem: str | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.problem is None and self.clock() < self.until

    @property
    def passed(self) -> bool:
        return self.problem is None and self.clock() >= self.until

    def observe(self, outputs: dict[str, Any]) -> None:
        bad = nonfinite_output(outputs)
        with self._lock:
            self.requests += 1
            if bad and self.problem is None:
                self.problem = f"{bad} on a live request"

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.errors >= self.max_errors and self.problem is None:
                self.problem = f"{self.errors} inference errors within the health window; last: {exc}"


def latency_regression(new: LoadedModel, old: LoadedModel, max_pct: float) -> str | None:
    """Compare p95 on the models' representative inputs in alternating rounds, so load on the box hits both alike; a
    regression must show in two passes before it counts (a burst of other work on a small board is not the new
    version's fault). Different backends: the selection already chose the fastest for the new version."""
    if new.backend.label != old.backend.label or not new.probe or not old.probe:
        return None

    for _ in range(2):
        new_p95, old_p95 = turn_about(new, old, runs=BENCH_RUNS // 3, rounds=4, q=95)
        if not (new_p95 > old_p95 * (1 + max_pct / 100) and new_p95 - old_p95 > MIN_REGRESSION_MS):
            return None
    return (
        f"p95 latency {new_p95:.2f} ms vs {old_p95:.2f} ms for version {old.version} on {old.backend.label} "
        f"(+{(new_p95 / old_p95 - 1) * 100:.0f}%, limit +{max_pct:.0f}%)"
    )
