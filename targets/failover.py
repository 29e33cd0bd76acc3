"""Run-time failover between backends: when the selected backend starts failing while serving (an accelerator lost, a
driver error), requests are served by the next working candidate instead of failing, and a periodic re-check
promotes the preferred backend back once it works again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from targets.base import Backend, BackendConfig, BackendError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    name: str
    loader: Callable[[], Backend] | None  # loads this candidate on first need (fallbacks cost no memory until used)
    backend: Backend | None = None
    error: str | None = None


class FailoverConfig(BackendConfig):
    type: str = "failover"


class FailoverBackend(Backend):
    """Serves with the preferred backend. A request that fails there is retried on the next candidate; a failure counts
    against the preferred backend only when another backend then served the same request (a bad input fails
    everywhere and demotes nothing). After `max_failures` such failures in a row the next candidate takes over."""

    type_key = "failover"  # lives outside targets/backends/, so the registry never offers it as a plugin
    config_class = FailoverConfig
    formats = frozenset()
    runtime_module = "targets"

    def __init__(
        self,
        preferred: Backend,
        fallbacks: list[tuple[str, Callable[[], Backend]]],
        *,
        max_failures: int = 3,
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        probe: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(FailoverConfig())
        self.on_change = on_change
        self.probe = probe  # representative inputs the re-check runs on
        self.inputs, self.outputs = preferred.inputs, preferred.outputs
        self.chain = [_Slot(preferred.label, None, preferred)] + [_Slot(name, load) for name, load in fallbacks]
        self.max_failures = max_failures
        self.recheck_s = recheck_s
        self.clock = clock
        self.active = 0
        self.failovers = 0
        self.reason: str | None = None
        self._failures = 0
        self._since = clock()
        self._last_check = clock()
        self._checking = threading.Lock()
        self._lock = threading.Lock()

    def load(self, path: Path, model_format: str) -> None:  # pragma: no cover - built from loaded backends
        raise BackendError("FailoverBackend wraps backends that are already loaded")

    @property
    def label(self) -> str:
        slot = self.chain[self.active]
        return slot.backend.label if slot.backend else slot.name

    @property
    def precision(self) -> str:
        slot = self.chain[self.active]
        return slot.backend.precision if slot.backend else "full"

    @property
    def metadata(self) -> dict[str, object]:
        slot = self.chain[self.active]
        return slot.backend.metadata if slot.backend else {}

    def status(self) -> dict[str, Any]:
        """What serves now and why, for the device status."""
        return {
            "active": self.label,
            "preferred": self.chain[0].name,
            "failed_over": self.active != 0,
            "failovers": self.failovers,
            "reason": self.reason,
            "since": self._since,
        }

    # -- serving ---------------------------------------------------------------------------------------------------

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = self.active
        errors: list[str] = []
        for index in range(start, len(self.chain)):
            backend = self._ensure(self.chain[index])
            if backend is None:
                errors.append(f"{self.chain[index].name}: {self.chain[index].error}")
                continue
            try:
                outputs = backend.infer(inputs)
            except Exception as exc:  # a dying runtime raises whatever it raises
                errors.append(f"{self.chain[index].name}: {exc}")
                continue
            self._served_by(index, start, errors)
            return outputs
        raise BackendError("; ".join(errors) or "no backend available")

    def _served_by(self, index: int, start: int, errors: list[str]) -> None:
        with self._lock:
            if index == start:
                self._failures = 0
            elif self.active == start:  # the active backend failed a request another backend could serve
                self._failures += 1
                if self._failures >= self.max_failures:
                    self._switch(index, f"{self.chain[start].name} failed {self._failures} requests in a row: "
                                        f"{errors[0]}")  # fmt: skip
        if self.active != 0 and self.clock() - self._last_check >= self.recheck_s:
            self._last_check = self.clock()
            threading.Thread(target=self.recheck, name="backend-recheck", daemon=True).start()

    def _switch(self, index: int, reason: str) -> None:
        log.warning("backend failover: %s -> %s (%s)", self.chain[self.active].name, self.chain[index].name, reason)
        self.active = index
        self.failovers += 1
        self.reason = reason
        self._failures = 0
        self._since = self.clock()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.status())
            except Exception:
                log.exception("failover status callback failed")

    def _ensure(self, slot: _Slot) -> Backend | None:
        if slot.backend is None and slot.loader is not None:
            try:
                slot.backend = slot.loader()
                slot.error = None
            except Exception as exc:
                slot.error = f"could not load: {exc}"
        return slot.backend

    # -- re-promotion ----------------------------------------------------------------------------------------------

    def recheck(self) -> bool:
        """Try the preferred backend on the model's representative inputs; promote it if it works."""
        if self.active == 0 or not self._checking.acquire(blocking=False):
            return self.active == 0
        try:
            preferred = self.chain[0].backend
            try:
                if preferred is None or self.probe is None:
                    raise BackendError("no representative inputs to re-check it on")
                preferred.infer(self.probe)

            except Exception as exc:
                log.info("preferred backend %s still fails: %s", self.chain[0].name, exc)
                return False
            with self._lock:
                log.warning("backend %s works again: promoted back from %s", self.chain[0].name, self.label)
                self.active = 0
                self.reason = f"re-promoted after a successful re-check (was failed over: {self.reason})"
                self._failures = 0
                self._since = self.clock()
            self._changed()
            return True
        finally:
            self._checking.release()

    def settle(self, timeout_s: float = 60.0) -> bool:
        settled = [slot.backend.settle(timeout_s) for slot in self.chain if slot.backend is not None]
        return any(settled)

    def close(self) -> None:
        for slot in self.chain:
            if slot.backend is not None:
                slot.backend.close()
