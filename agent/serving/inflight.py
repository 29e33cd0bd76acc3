"""Counts the inferences running now, so shutdown lets them finish before the agent goes offline (and, per model, so
a model serving a request is never unloaded: agent/serving/eviction.py); notes when each model was last asked."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from agent.serving.table import LoadedModel, ModelTable


class Inflight:
    """A counter of running inferences, and a wait for it to reach zero."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()
        self._by_name: Counter[str] = Counter()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def busy(self, name: str) -> bool:
        """Whether an inference of model `name` runs now."""
        return self._by_name[name] > 0

    def enter(self, name: str) -> None:
        with self._idle:
            self._by_name[name] += 1
        self.__enter__()

    def leave(self, name: str) -> None:
        with self._idle:
            self._by_name[name] -= 1
            if self._by_name[name] <= 0:
                del self._by_name[name]
        self.__exit__()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every running inference to end; False if some still run."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


class TrackedModel:
    """A LoadedModel whose infer() calls are counted; everything else is the model's."""

    __slots__ = ("_model", "_inflight")

    def __init__(self, model: LoadedModel, inflight: Inflight) -> None:
        self._model = model
        self._inflight = inflight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def infer(self, arrays: dict[str, Any]) -> dict[str, Any]:
        name = self._model.name
        self._inflight.enter(name)
        try:
            return self._model.infer(arrays)
        finally:
            self._inflight.leave(name)


class TrackedTable(ModelTable):
    """The serving table, handing out models whose inferences shutdown waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight = Inflight()
        self.last_used: dict[str, float] = {}  # monotonic time each model was last asked for

    def get(self, name: str) -> LoadedModel | None:
        model = super().get(name)
        if model is not None:
            self.last_used[name] = time.monotonic()
        return TrackedModel(model, self.inflight) if model is not None else None  # type: ignore[return-value]
