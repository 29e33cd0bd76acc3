"""A bounded uniform sample of a model's real request inputs (memory only): what `edgectl capture` fetches, and
what re-selection times when live shapes differ from the ones the trial saw."""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported by the first request, not by an idle agent
    import numpy as np

Inputs = dict[str, "np.ndarray"]
Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def signature(inputs: Inputs) -> Signature:
    """The names, shapes and dtypes of one input set: two sets with the same signature time alike."""
    return tuple(sorted((name, tuple(a.shape), a.dtype.str) for name, a in inputs.items()))


def nbytes(inputs: Inputs) -> int:
    return sum(int(a.nbytes) for a in inputs.values())


class Reservoir:
    """Algorithm R over the requests a model answered: every request had the same chance to be kept, whatever the
    traffic; at most `capacity` input sets and `max_bytes` in all (a set bigger than a quarter of that is skipped)."""

    def __init__(self, capacity: int = 32, max_bytes: int = 16 << 20, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.seen = 0
        self._kept: list[Inputs] = []
        self._bytes = 0
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def offer(self, inputs: Inputs) -> None:
        """Consider one answered request's inputs; copied only when kept, so most requests cost a counter."""
        size = nbytes(inputs)
        if size > self.max_bytes // 4:
            return
        with self._lock:
            self.seen += 1
            slot = len(self._kept) if len(self._kept) < self.capacity else self._rng.randrange(self.seen)
            if slot >= self.capacity:
                return
            copied = {name: a.copy() for name, a in inputs.items()}
            if slot == len(self._kept):
                if self._bytes + size > self.max_bytes:
                    return
                self._kept.append(copied)
            else:
                self._bytes -= nbytes(self._kept[slot])
                self._kept[slot] = copied
            self._bytes += size

    def snapshot(self) -> list[Inputs]:
        with self._lock:
            return list(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept, self._bytes, self.seen = [], 0, 0

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"kept": len(self._kept), "seen": self.seen, "bytes": self._bytes}
