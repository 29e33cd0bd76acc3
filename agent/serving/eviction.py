"""Which models stay in memory: a version is admitted only if its predicted footprint fits the budget; when it does
not, the least recently used unpinned models that serve no request now are unloaded (their files stay) and come
back on their next request. Where nothing can be unloaded the version is refused, naming memory.

An unloaded model keeps its place in the serving table (status, version, metadata), its backend replaced by an
`Unloaded` stand-in whose first inference loads it again through `reload` (the deploy side's loader), waiting at
most `wait_s` for the memory lock; what cannot come back in time or fit answers ModelUnavailable (a 503 with
Retry-After)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.serving.memory import MIB, Budget
from protocol.errors import EdgeError
from targets.base import Backend, BackendError
from targets.footprint import (
    begin_measure,
    end_measure,
    grown_mb,
    import_runtime,
    pin_allocator,
    release_free,
    rss_bytes,
)
from targets.gpu_memory import nvmap_bytes

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.inflight import TrackedTable
    from agent.serving.table import LoadedModel
    from targets.trial import CandidateResult

log = logging.getLogger(__name__)

TRIAL_BASE_MB = 48.0  # the trial worker's own interpreter and runtime, beside the model it loads
PEAK_FACTOR = 2.0  # a runtime's high-water mark while it loads a model of this size (the file, then its tensors)


class MemoryRefused(BackendError):
    """A version that does not fit the memory budget, with nothing left to unload."""


class ModelUnavailable(EdgeError):
    """An unloaded model that could not be loaded again in time, or that does not fit now: retry later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, code="unavailable")
        self.retry_after_s = retry_after_s


class Unloaded(Backend):
    """Stands in for an unloaded model's backend: its signature and label, and a reload on the first inference."""

    type_key = "unloaded"
    runtime_module = ""

    def __init__(self, name: str, old: Backend, residency: Residency) -> None:
        self.config = old.config
        self.inputs, self.outputs = list(old.inputs), list(old.outputs)
        self._label, self._precision, self._metadata = old.label, old.precision, old.metadata
        self.name = name
        self.residency = residency

    def load(self, path: Any, model_format: str) -> None:  # pragma: no cover - never loaded itself
        raise BackendError("an unloaded model is loaded by its residency")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.residency.bring_back(self.name).infer(inputs)

    @property
    def label(self) -> str:
        return self._label

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def metadata(self) -> dict[str, object]:
        return self._metadata


@dataclass
class Admission:
    """One load under the memory lock: the prediction the trial gave, and what loading it here measured. On a Jetson
    also the GPU (nvmap) memory, outside the resident set but from the same RAM (targets/gpu_memory.py): the trial's
    `unified_mb` and the agent's own `measured_unified_mb`, None where it cannot be read."""

    name: str
    residency: Residency
    predicted_mb: float | None = None
    peak_mb: float | None = None
    before: int = 0
    measured_mb: float | None = None
    unified_mb: float | None = None
    gpu_before: int | None = None
    measured_unified_mb: float | None = None

    def admit(self, result: CandidateResult) -> None:
        """Called with the chosen candidate's trial result right before it loads here: make room, or refuse."""
        self.predicted_mb, self.peak_mb, self.unified_mb = result.rss_mb, result.peak_mb, result.unified_mb
        need = max(result.peak_mb or 0.0, result.rss_mb or 0.0)  # a load passes its peak on the way to steady
        need += result.unified_mb or 0.0  # a Jetson's GPU memory comes from the same RAM
        if need:
            self.residency.make_room(need, self.name)
        import_runtime(_runtime_of(result.name))
        self.before = begin_measure()  # the allocator and heap as the trial worker's Meter has them (footprint.py)
        self.gpu_before = nvmap_bytes(root=self.residency.gpu_root)

    def loaded(self) -> None:
        """After the load and warm-up: what the agent's own resident (and GPU) memory grew by."""
        after = end_measure()
        if self.before:
            self.measured_mb = grown_mb(self.before, after)
            self.measured_unified_mb = grown_mb(self.gpu_before, nvmap_bytes(root=self.residency.gpu_root))
        unified = self.measured_unified_mb if self.measured_unified_mb is not None else self.unified_mb
        self.residency.note(self.name, self.measured_mb or self.predicted_mb, unified)

    def report(self) -> dict[str, Any]:
        budget = self.residency.budget
        out = {"predicted_mb": self.predicted_mb, "peak_mb": self.peak_mb, "measured_mb": self.measured_mb}
        out |= {"unified_mb": self.unified_mb, "measured_unified_mb": self.measured_unified_mb}
        return {k: v for k, v in out.items() if v is not None} | {
            "budget_mb": round(budget.limit_mb),
            "budget_source": budget.source,
        }


def _runtime_of(candidate: str) -> str | None:
    from targets import registry

    kind = registry.backend_types().get(candidate.split(":", 1)[0])
    return kind.runtime_module if kind is not None else None


@dataclass
class Residency:
    """The memory budget applied to the serving table (see the module's docstring)."""

    budget: Budget
    table: TrackedTable
    pinned: set[str] = field(default_factory=set)  # the agent config's pinned_models
    pinned_desired: set[str] = field(default_factory=set)  # pinned in the desired state (`edgectl push --pin`)
    headroom_mb: float = 16.0  # kept free for requests' own tensors
    wait_s: float = 30.0  # a request for an unloaded model waits this long for the memory lock
    reload: Callable[[str], LoadedModel | None] | None = None  # the deploy side: a model's serving version, loaded
    footprints: dict[str, float] = field(default_factory=dict)  # MiB each resident model added (with `unified`)
    unified: dict[str, float] = field(default_factory=dict)  # of which a Jetson's GPU (nvmap) memory, where known
    gpu_root: Path = Path("/")  # where the nvmap table is read: "/" but in tests (targets/gpu_memory.py)
    evictions: int = 0
    reloads_ms: list[float] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    on_change: Callable[[], None] | None = None  # after each load and unload (the OOM guard's record: oomguard.py)

    # -- loading -----------------------------------------------------------------------------------------------------

    @contextmanager
    def loading(self, name: str, file_bytes: int, trial: bool) -> Iterator[Admission]:
        """Hold the memory lock over one load; before a trial, make room for the worker's peak on this file."""
        if not self.lock.acquire(timeout=max(self.wait_s, 1.0) * 10):
            raise MemoryRefused("memory is busy with other loads; try again")
        try:
            if trial:
                self.make_room(TRIAL_BASE_MB + PEAK_FACTOR * file_bytes / MIB, name, "to try it")
            admission = Admission(name, self, before=rss_bytes())  # admit() measures again, once the runtime is in
            yield admission
            admission.loaded()
        finally:
            pin_allocator()  # the serving thresholds back, also where the load failed before loaded()
            self.lock.release()
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a record for the next start never fails a load
                log.exception("noting the memory state failed")

    def note(self, name: str, mb: float | None, unified_mb: float | None = None) -> None:
        """A model's footprint: resident MiB, plus on a Jetson its GPU MiB (the same RAM)."""
        if mb is None and unified_mb is None:
            return
        self.footprints[name] = round((mb or 0.0) + (unified_mb or 0.0), 1)
        self.unified.pop(name, None)
        if unified_mb is not None:
            self.unified[name] = unified_mb

    def forget(self, name: str) -> None:
        self.footprints.pop(name, None)
        self.unified.pop(name, None)

    # -- making room -------------------------------------------------------------------------------------------------

    def make_room(self, need_mb: float, name: str, why: str = "") -> None:
        """Unload least recently used models until `need_mb` fits; MemoryRefused naming memory when they cannot."""
        with self.lock:
            free = self.budget.free_mb() - self.headroom_mb
            for victim in self._victims(name):
                if need_mb <= free:
                    return
                self.evict(victim)
                free = self.budget.free_mb() - self.headroom_mb
            if need_mb <= free:
                return
            pinned = sorted(n for n in self.pins() if self._resident(n))
            busy = sorted(n for n in self.table.names() if n != name and self._busy(n))
            held = f"; pinned: {', '.join(pinned) or 'none'}" + (f"; busy: {', '.join(busy)}" if busy else "")
            raise MemoryRefused(
                f"needs ~{need_mb:.0f} MiB{' ' + why if why else ''}, {max(free, 0):.0f} MiB free of a "
                f"{self.budget.limit_mb:.0f} MiB budget{held}"
            )

    def pin(self, names: set[str]) -> None:
        """The models the desired state pins (replacing those it pinned before); the config's pins stay."""
        with self.lock:
            self.pinned_desired = set(names)

    def pins(self) -> set[str]:
        return self.pinned | self.pinned_desired

    def _resident(self, name: str) -> bool:
        model = self.table.current(name)
        return model is not None and not isinstance(model.backend, Unloaded)

    def _busy(self, name: str) -> bool:
        return self.table.inflight.busy(name)

    def _victims(self, name: str) -> list[str]:
        """Resident, unpinned models serving no request now, least recently used first."""
        pins = self.pins()
        names = [n for n in self.table.names() if n != name and n not in pins and self._resident(n)]
        return sorted(
            (n for n in names if not self._busy(n)), key=lambda n: (self._watched(n), self.table.last_used.get(n, 0.0))
        )

    def _watched(self, name: str) -> bool:
        """In its health window the rollback still holds the version: unloading it frees memory only after that."""
        model = self.table.current(name)
        return model is not None and model.watch is not None and model.watch.active

    def evict(self, name: str) -> bool:
        """Unload one model (its files stay); requests already running on it finish on the old backend."""
        with self.lock:
            model = self.table.current(name)
            if model is None or isinstance(model.backend, Unloaded):
                return False
            self.table.swap(replace(model, backend=Unloaded(name, model.backend, self)))
            del model
            gc.collect()
            release_free()  # what the unload freed goes back to the system, not only to the heap
            self.evictions += 1
            log.info("unloaded %s to free memory (~%s MiB); it loads again on its next request", name,
                     self.footprints.get(name, "?"))  # fmt: skip
            return True

    # -- coming back -------------------------------------------------------------------------------------------------

    def bring_back(self, name: str) -> Backend:
        """The backend of `name` loaded again (by this request, or one before it); ModelUnavailable otherwise."""
        retry = max(int(self.wait_s), 1)
        if not self.lock.acquire(timeout=self.wait_s):
            raise ModelUnavailable(f"model {name!r} is unloaded to save memory and is still waiting to load", retry)
        try:
            current = self.table.current(name)
            if current is None:
                raise ModelUnavailable(f"model {name!r} is no longer served here", retry)
            if not isinstance(current.backend, Unloaded):
                return current.backend
            if self.reload is None:
                raise ModelUnavailable(f"model {name!r} is unloaded and nothing can load it", retry)
            started = time.perf_counter()
            try:
                model = self.reload(name)
            except BackendError as exc:
                raise ModelUnavailable(f"model {name!r} is unloaded to save memory and cannot load now: {exc}",
                                       retry) from None  # fmt: skip
            if model is None:
                raise ModelUnavailable(f"model {name!r} is unloaded and its files are gone", retry)
            if self.table.current(name) is current:
                self.table.swap(replace(current, backend=model.backend))
            self.reloads_ms.append((time.perf_counter() - started) * 1000)
            del self.reloads_ms[:-1000]
            log.info("loaded %s again on request in %.0f ms", name, self.reloads_ms[-1])
            return model.backend
        finally:
            self.lock.release()

    def telemetry(self) -> dict[str, Any]:
        """The budget's figures for each telemetry message (agent/telemetry/publisher.py)."""
        figures = self.status()
        resources = {
            "budget_mb": figures["budget_mb"], "budget_used_mb": figures["used_mb"], "unloads": self.evictions,
            "reloads": figures["reloads"], "reload_p95_ms": figures["reload_p95_ms"], "oom_kills": figures["oom_kills"],
        }  # fmt: skip
        models = {
            name: {"memory_mb": mb}
            | ({"unified_mb": self.unified[name]} if name in self.unified else {})
            | {"resident": name not in figures["unloaded"]}
            for name, mb in figures["models_mb"].items()
        }
        return {"resources": {k: v for k, v in resources.items() if v is not None}, "models": models}

    def status(self) -> dict[str, Any]:
        """For telemetry and the status: the budget, what is used, each model's footprint and residency."""
        reloads = sorted(self.reloads_ms)
        p95 = reloads[min(len(reloads) - 1, int(len(reloads) * 0.95))] if reloads else None
        return {
            "budget_mb": round(self.budget.limit_mb),
            "used_mb": round(self.budget.used() / MIB, 1),
            "models_mb": {n: self.footprints.get(n) for n in self.table.names()},
            "unloaded": [n for n in self.table.names() if not self._resident(n)],
            "evictions": self.evictions,
            "reloads": len(reloads),
            "reload_p95_ms": round(p95, 1) if p95 is not None else None,
            "oom_kills": self.budget.oom_kills(),
        }
