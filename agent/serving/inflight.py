"""Counts the inferences running now, so shutdown lets them finish before the agent goes offline."""

from __future__ import annotations

import threading
from typing import Any

from agent.serving.table import LoadedModel, ModelTable


class Inflight:
    """A counter of running inferences, and a wait for it to reach zero."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

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
        with self._inflight:
            return self._model.infer(arrays)


class TrackedTable(ModelTable):
    """The serving table, handing out models whose inferences shutdown waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight = Inflight()

    def get(self, name: str) -> LoadedModel | None:
        model = super().get(name)
        return TrackedModel(model, self.inflight) if model is not None else None  # type: ignore[return-value]
