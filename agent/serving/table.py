"""The table of models serving right now; a swap is one reference change, so requests never see a half-loaded model."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

from targets.base import Backend, BackendError
from targets.tensors import check_inputs

if TYPE_CHECKING:
    import numpy as np

    from agent.serving.health import HealthWatch
    from agent.serving.live import LiveTap
    from agent.telemetry.stats import ModelStats


@dataclass(frozen=True)
class LoadedModel:
    """One model version, loaded and warmed up on a backend."""

    name: str
    version: str
    sha256: str
    backend: Backend
    stats: ModelStats | None = field(default=None, compare=False, repr=False)
    variant: str | None = None  # an optimized variant of the desired model serves (int8-static, openvino, ...)
    artifact_sha256: str | None = None  # the file loaded, when it is a variant's and not `sha256` itself
    watch: HealthWatch | None = field(default=None, compare=False, repr=False)  # set for a freshly swapped version
    # Representative inputs (the operator's samples, or synthetic inputs the reference runtime ran): what warm-up,
    # timing and every check run on. Empty when none were found: the model then serves untimed and unchecked.
    probe: tuple[dict[str, np.ndarray], ...] = field(default=(), compare=False, repr=False)
    tap: LiveTap | None = field(default=None, compare=False, repr=False)  # the reservoir and shadow mirror
    attempt: int = 0  # the desired model's attempt it was deployed at (a rollback refuses that attempt)

    def sample(self, index: int = 0) -> dict[str, np.ndarray] | None:
        """One representative input set, or None when the model has none."""
        return self.probe[index % len(self.probe)] if self.probe else None

    @property
    def artifact(self) -> str:
        return self.artifact_sha256 or self.sha256

    def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check the inputs against the model's signature (InputError says what was expected), then run.
        The one place every inference passes (v2 HTTP API and MQTT RPC), inside a fresh version's health window and
        out of it alike: latency, errors (a request that does not fit the model too) and sampled output statistics
        go to `stats` when the model has them; in the window the watch also sees each answer (NaN/Inf) and each
        failure of the model's own, a BackendError: a client's bad request never counts toward a rollback."""
        stats = self.stats
        watch = self.watch if self.watch is not None and self.watch.active else None  # in the health window
        started = perf_counter()
        try:
            check_inputs(self.backend.inputs, arrays)
            outputs = self.backend.infer(arrays)
        except Exception as exc:
            if stats is not None:
                stats.error()
            if watch is not None and isinstance(exc, BackendError):
                watch.error(exc)
            raise
        if stats is not None:
            stats.record((perf_counter() - started) * 1000.0, outputs, arrays)
        if watch is not None:
            watch.observe(outputs, arrays)
        if self.tap is not None:
            self.tap.offer(arrays)
        return outputs


class ModelTable:
    """Models by name. The old version is dropped, not closed: requests still holding it finish on it."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def current(self, name: str) -> LoadedModel | None:
        """The LoadedModel itself (subclasses may wrap what get() hands to request handlers)."""
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Make `model` the one serving its name; return the one it replaced."""
        with self._lock:
            old = self._models.get(model.name)
            self._models = {**self._models, model.name: model}
        return old

    def remove(self, name: str) -> LoadedModel | None:
        with self._lock:
            models = dict(self._models)
            old = models.pop(name, None)
            self._models = models
        return old

    def __len__(self) -> int:
        return len(self._models)
