"""Model-quality summaries built on the device from the sampled requests (the wire forms are protocol/quality.py):
per-element statistics of small outputs and of inputs (block means for long rows), the top-1 confidence histogram of
classifier outputs, and quantile sketches of each input row's mean and std (an image's brightness and contrast).

Called from `ModelStats._sample` (one request in N, within the statistics' time budget), never on every request.
A few vectorized numpy calls per tensor: a row is one item of the batch, at most MAX_ROWS rows of a batch and
`max_elements` of a long row are looked at (each taken with a stride); everything merges on the controller.
"""

from __future__ import annotations

import math
from typing import Any

from protocol.quality import BLOCKS, CONFIDENCE_BINS, MAX_TRACKED_ELEMENTS, SKETCH_SIZE, Elements, InputStats

SKETCH_BUFFER = 4 * SKETCH_SIZE  # values held before they are compressed into the sketch
MAX_ROWS = 64  # rows of one request's tensor summarised (a stride over a larger batch): the cost stays bounded


def rows_of(array: Any, max_elements: int) -> tuple[Any, bool] | None:
    """The tensor as float64 rows [batch, elements] (block means where a row is long), finite rows only, and whether
    they are blocks; None for a tensor with nothing numeric to summarise."""
    import numpy as np  # loaded: a model is serving

    kind = getattr(getattr(array, "dtype", None), "kind", "")
    if not kind or kind not in "fiub" or array.size == 0:
        return None
    rows = array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)
    if rows.shape[0] > MAX_ROWS:  # a large batch: a stride of its rows
        rows = rows[:: -(-rows.shape[0] // MAX_ROWS)]
    width = rows.shape[1]
    blocks = width > MAX_TRACKED_ELEMENTS
    if blocks:
        if width > max_elements:  # a stride over each row: the blocks stay in place, each sees fewer elements
            rows = rows[:, :: -(-width // max_elements)]
            width = rows.shape[1]
        if width < BLOCKS:
            blocks = False
        elif width % BLOCKS == 0:
            rows = rows.reshape(rows.shape[0], BLOCKS, width // BLOCKS).mean(axis=2, dtype=np.float64)
        else:
            starts = (np.arange(BLOCKS) * width) // BLOCKS
            sizes = np.diff(np.append(starts, width))
            rows = np.add.reduceat(rows.astype(np.float64), starts, axis=1) / sizes
    if rows.dtype != np.float64:
        rows = rows.astype(np.float64)
    if kind == "f":
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            rows = rows[finite]
            if not len(rows):
                return None
    return rows, blocks


class ElementStats:
    """Running per-element mean and M2 over rows (Chan et al.), numpy arrays; reset when the row width changes."""

    __slots__ = ("rows", "mean", "m2", "blocks")

    def __init__(self) -> None:
        self.rows = 0
        self.mean: Any = None
        self.m2: Any = None
        self.blocks = False

    def add(self, rows: Any, blocks: bool) -> None:
        n = rows.shape[0]
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0) if n > 1 else mean * 0.0
        if self.mean is None or self.mean.shape != mean.shape or self.blocks != blocks:
            self.rows, self.mean, self.m2, self.blocks = n, mean, m2, blocks
            return
        total = self.rows + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.rows * n / total)
        self.rows = total

    def wire(self) -> Elements | None:
        if not self.rows:
            return None
        std = (self.m2 / self.rows) ** 0.5
        return Elements(rows=self.rows, blocks=self.blocks, mean=self.mean.tolist(), std=std.tolist())


class SketchBuilder:
    """A quantile sketch of one number per row: values buffered, compressed into SKETCH_SIZE centroids."""

    __slots__ = ("centroids", "buffer")

    def __init__(self) -> None:
        self.centroids: list[tuple[float, float]] = []
        self.buffer: list[float] = []

    def add(self, values: list[float]) -> None:
        self.buffer.extend(values)
        if len(self.buffer) >= SKETCH_BUFFER:
            self._compress()

    def _compress(self) -> None:
        """protocol.quality.compress, vectorized: sort, then equal-weight groups by cumulative weight."""
        import numpy as np

        values = np.array([v for v, _ in self.centroids] + self.buffer, dtype=np.float64)
        weights = np.array([w for _, w in self.centroids] + [1.0] * len(self.buffer), dtype=np.float64)
        self.buffer = []
        order = np.argsort(values, kind="stable")
        values, weights = values[order], weights[order]
        total = weights.sum()
        groups = np.minimum(
            ((np.cumsum(weights) - weights / 2) / total * SKETCH_SIZE).astype(np.int64), SKETCH_SIZE - 1
        )
        weight = np.bincount(groups, weights, SKETCH_SIZE)
        moment = np.bincount(groups, weights * values, SKETCH_SIZE)
        kept = weight > 0
        self.centroids = list(zip((moment[kept] / weight[kept]).tolist(), weight[kept].tolist()))

    def wire(self) -> list[tuple[float, float]] | None:
        if self.buffer:
            self._compress()
        return [(round(v, 6), w) for v, w in self.centroids] or None


class InputSummary:
    """One input: its elements and the sketches of each row's mean (level) and std (spread)."""

    __slots__ = ("sampled", "elements", "level", "spread")

    def __init__(self) -> None:
        self.sampled = 0
        self.elements = ElementStats()
        self.level = SketchBuilder()
        self.spread = SketchBuilder()

    def add(self, array: Any, max_elements: int) -> None:
        self.sampled += 1
        found = rows_of(array, max_elements)
        if found is None:
            return
        rows, blocks = found
        self.elements.add(rows, blocks)
        if blocks:  # the row's own level and spread, on a strided view of it
            flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
            flat = flat[:: -(-flat.shape[0] // MAX_ROWS)]
            flat = flat[:, :: -(-flat.shape[1] // max_elements)]
            level, spread = flat.mean(axis=1, dtype="float64"), flat.std(axis=1, dtype="float64")
            keep = [i for i, (a, b) in enumerate(zip(level.tolist(), spread.tolist())) if math.isfinite(a + b)]
            self.level.add([level[i] for i in keep] if len(keep) < len(level) else level.tolist())
            self.spread.add([spread[i] for i in keep] if len(keep) < len(spread) else spread.tolist())
        else:
            self.level.add(rows.mean(axis=1).tolist())
            self.spread.add(rows.std(axis=1).tolist())

    def wire(self) -> InputStats:
        return InputStats(
            sampled=self.sampled, elements=self.elements.wire(), level=self.level.wire(), spread=self.spread.wire()
        )


def confidence_bin(confidence: float) -> int:
    """The top-1 confidence histogram's bin: CONFIDENCE_BINS equal bins over [0, 1]."""
    return min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS)))
