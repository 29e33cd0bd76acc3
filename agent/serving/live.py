"""Where a model's answered requests go besides the client: its input reservoir, and a shadow check's mirror."""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the first request, not by an idle agent
    import numpy as np

from agent.serving.reservoir import Reservoir

Inputs = dict[str, "np.ndarray"]


class Mirror:
    """Copies of a share of live request inputs, queued for a shadow check; a full queue drops, never waits."""

    def __init__(self, share: float = 1.0, capacity: int = 16, rng: random.Random | None = None) -> None:
        self.share = share
        self.queue: queue.Queue[Inputs] = queue.Queue(maxsize=capacity)
        self.seen = 0  # requests offered, copied or not
        self.dropped = 0
        self._rng = rng or random.Random()

    def offer(self, inputs: Inputs) -> None:
        self.seen += 1
        if self.share < 1.0 and self._rng.random() >= self.share:
            return
        if self.queue.full():
            self.dropped += 1
            return
        try:
            self.queue.put_nowait({name: a.copy() for name, a in inputs.items()})
        except queue.Full:
            self.dropped += 1


class LiveTap:
    """One model name's tap; every version serving under that name shares it (the reservoir outlives a swap)."""

    def __init__(self, reservoir: Reservoir | None) -> None:
        self.reservoir = reservoir
        self.mirror: Mirror | None = None  # set while a new version is shadow-checked
        self.last_request = float("-inf")  # time.monotonic() of the last answered request

    def idle_for(self, seconds: float) -> bool:
        """No request was answered in the last `seconds`: a shadow check would wait for traffic in vain."""
        return time.monotonic() - self.last_request > seconds

    def offer(self, inputs: dict[str, np.ndarray]) -> None:
        """One request's inputs, answered: costs a counter unless kept or mirrored (both copy)."""
        self.last_request = time.monotonic()
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
