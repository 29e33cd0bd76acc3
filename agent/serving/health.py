"""Watches a freshly swapped-in version on real requests (errors, NaN/Inf) for agent.deploy.rollback to act on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from targets.agreement import nonfinite


class HealthWatch:
    """Counts what real requests to the new version show during `window_s`; `problem` says why it is unhealthy.
    LoadedModel.infer tells it each answer and each failure that is the model's own (never a client's bad request)."""

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

    def observe(self, outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> None:
        """One answered request; NaN/Inf in its outputs is the model's fault unless its `inputs` held some."""
        bad = nonfinite(outputs, inputs)
        with self._lock:
            self.requests += 1
            if bad and self.problem is None:
                self.problem = f"{bad} on a live request"

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.errors >= self.max_errors and self.problem is None:
                self.problem = f"{self.errors} inference errors within the health window; last: {exc}"
