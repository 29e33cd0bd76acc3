"""Model-quality summaries on the wire (device -> controller, inside telemetry): what a window's inputs and outputs
looked like, in forms that merge across windows and devices, so the controller can judge drift against a baseline.

- `Elements`: per-element mean and std over the rows a window sampled (a row is one item of the batch: an output
  [N, 4] gives 4 elements per row). Rows longer than `MAX_TRACKED_ELEMENTS` are cut into `BLOCKS` equal contiguous
  blocks and each block's mean is one element (`blocks` true): an image's channel bands, a sequence's segments.
- `Sketch`: a small quantile sketch of one number per row, `SKETCH_SIZE` centroids [[value, weight], ...] sorted
  by value (a merging digest with equal weights per centroid), for a test on the whole distribution (PSI, KS).
- `InputStats`: an input's elements and the sketches of each row's mean (`level`: an image's brightness) and
  std (`spread`: its contrast).
- On `OutputStats` (protocol/telemetry.py): `elements`, and for classifier outputs `top1_hist`, the top-1
  confidence in `CONFIDENCE_BINS` equal bins over [0, 1] (the class mix is `classes`).

Everything is optional: an agent that sends none of it still works, and drift then has nothing to judge there.
Pure Python, no numpy: the agent builds these with numpy, the controller merges them here.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_TRACKED_ELEMENTS = 64  # rows up to this long are summarised element by element
BLOCKS = 16  # longer rows: this many block means
CONFIDENCE_BINS = 10
SKETCH_SIZE = 32
MAX_SKETCH = 64  # what the wire accepts (a sketch merged by an older/newer agent may hold a few more)
MAX_TELEMETRY_INPUTS = 16

_FINITE = ConfigDict(extra="ignore", allow_inf_nan=False)
_Count = Annotated[int, Field(ge=0, le=(1 << 63) - 1)]
Centroid = tuple[float, Annotated[float, Field(ge=0)]]
Sketch = list[Centroid]


class Elements(BaseModel):
    """Per-element (or per-block) mean and population std over `rows` rows."""

    model_config = _FINITE
    rows: _Count = 0
    blocks: bool = False
    mean: list[float] = Field(default_factory=list, max_length=MAX_TRACKED_ELEMENTS)
    std: list[float] = Field(default_factory=list, max_length=MAX_TRACKED_ELEMENTS)


class InputStats(BaseModel):
    """One input over the sampled requests of a window."""

    model_config = _FINITE
    sampled: _Count = 0
    elements: Elements | None = None
    level: Sketch | None = Field(default=None, max_length=MAX_SKETCH)  # each row's mean
    spread: Sketch | None = Field(default=None, max_length=MAX_SKETCH)  # each row's std


# -- merging (both sides) -----------------------------------------------------------------------------------------


def merge_moments(
    rows_a: int, mean_a: Sequence[float], std_a: Sequence[float], rows_b: int, mean_b: Sequence[float],
    std_b: Sequence[float],
) -> tuple[int, list[float], list[float]]:  # fmt: skip
    """Two per-element (rows, mean, std) summaries as one (Chan et al.); equal lengths."""
    rows = rows_a + rows_b
    if not rows:
        return 0, list(mean_a), list(std_a)
    means, stds = [], []
    for ma, sa, mb, sb in zip(mean_a, std_a, mean_b, std_b):
        delta = mb - ma
        mean = ma + delta * rows_b / rows
        m2 = sa * sa * rows_a + sb * sb * rows_b + delta * delta * rows_a * rows_b / rows
        means.append(mean)
        stds.append(math.sqrt(max(m2, 0.0) / rows))
    return rows, means, stds


def compress(points: Sequence[tuple[float, float]], size: int = SKETCH_SIZE) -> list[tuple[float, float]]:
    """Weighted points as at most `size` centroids of about equal weight, sorted by value."""
    items = sorted((float(v), float(w)) for v, w in points if w > 0)
    total = sum(w for _, w in items)
    if len(items) <= size or total <= 0:
        return items
    out: list[tuple[float, float]] = []
    group, weight, moment, seen = 0, 0.0, 0.0, 0.0
    for value, w in items:
        target = min(size - 1, int((seen + w / 2) / total * size))
        if target != group and weight > 0:
            out.append((moment / weight, weight))
            weight, moment = 0.0, 0.0
        group = target
        weight += w
        moment += value * w
        seen += w
    if weight > 0:
        out.append((moment / weight, weight))
    return out


def merge_sketches(a: Sketch | None, b: Sketch | None, size: int = SKETCH_SIZE) -> Sketch | None:
    if not a:
        return list(b) if b else None
    if not b:
        return list(a)
    return compress(list(a) + list(b), size)


def sketch_weight(sketch: Sketch | None) -> float:
    return sum(w for _, w in sketch) if sketch else 0.0


def sketch_cdf(sketch: Sketch, x: float) -> float:
    """The fraction of the weight at or below x (linear between centroids, each centroid's weight centred on it)."""
    values = [v for v, _ in sketch]
    total = sum(w for _, w in sketch)
    if not values or total <= 0:
        return 0.0
    mids, seen = [], 0.0
    for _, w in sketch:
        mids.append((seen + w / 2) / total)
        seen += w
    if x < values[0]:
        return 0.0
    if x >= values[-1]:
        return 1.0
    i = bisect_left(values, x)
    if values[i] == x:
        return mids[i]
    lo, hi = values[i - 1], values[i]
    return mids[i - 1] + (mids[i] - mids[i - 1]) * (x - lo) / (hi - lo)


def sketch_quantile(sketch: Sketch, q: float) -> float:
    """The value at fraction q of the weight (the inverse of sketch_cdf between centroids)."""
    total = sum(w for _, w in sketch)
    mids, seen = [], 0.0
    for _, w in sketch:
        mids.append((seen + w / 2) / total)
        seen += w
    values = [v for v, _ in sketch]
    if q <= mids[0]:
        return values[0]
    if q >= mids[-1]:
        return values[-1]
    i = bisect_left(mids, q)
    lo, hi = mids[i - 1], mids[i]
    return values[i - 1] + (values[i] - values[i - 1]) * (q - lo) / (hi - lo) if hi > lo else values[i]


def sketch_mean(sketch: Sketch) -> float:
    total = sum(w for _, w in sketch)
    return sum(v * w for v, w in sketch) / total if total else 0.0
