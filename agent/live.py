"""Where a model's answered requests go besides the client: its input reservoir, and a shadow check's mirror."""

from __future__ import annotations

import threading

import numpy as np

from agent.reservoir import Reservoir
from agent.shadow import Mirror


class LiveTap:
    """One model name's tap; every version serving under that name shares it (the reservoir outlives a swap)."""

    def __init__(self, reservoir: Reservoir | None) -> None:
        self.reservoir = reservoir
        self.mirror: Mirror | None = None  # set while a new version is shadow-checked

    def offer(self, inputs: dict[str, np.ndarray]) -> None:
        """One request's inputs, answered: costs a counter unless kept or mirrored (both copy)."""
        if self.reservoir is not None:
            self.reservoir.offer(inputs)
        mirror = self.mirror
        if mirror is not None:
            mirror.offer(inputs)


class LiveTaps:
    """The taps by model name; no reservoirs when `capacity` is 0 (the privacy switch: no request is kept)."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._taps: dict[str, LiveTap] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LiveTap:
        with self._lock:
            tap = self._taps.get(name)
            if tap is None:
                reservoir = Reservoir(self.capacity, self.max_bytes) if self.capacity else None
                tap = self._taps[name] = LiveTap(reservoir)
            return tap

    def drop(self, name: str) -> None:
        with self._lock:
            self._taps.pop(name, None)
