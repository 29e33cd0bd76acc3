"""The class mix of a classifier output on the device: which outputs are class scores, the predicted class of each
row (argmax) counted by class index, the top-1 confidence histogram, and whether the rows were probabilities.

Counted on the sampled requests only (`ModelStats._sample`). Every class seen is counted by its index (at most
MAX_CLASSES columns are taken for class scores, so a window holds at most that many keys, and never more than the
rows it counted); the wire names the 31 most frequent in `classes` (with `other`, as older controllers read it) and
all of them in `class_counts` where there are more. A large batch is counted on a stride of its rows, as the
per-element summary is (at most 64 rows of a request, more where they hold under `max_elements` values), so a
1,000-class model at batch 8 is counted on every row, at batch 256 on every fourth.

`scores` says what the rows were: `probabilities` when every counted row was in [0, 1] and summed to 1 (a softmax),
`logits` when one was not (raw scores, or a regression an [N, K] shape made look like class scores), `declared`
for a classifier declared at push. The controller judges a probability (or declared) output by its class mix and
top-1 confidence alone: the per-element tests assume rows not far heavier-tailed than a normal's, and a class's
probability is near 0 on most rows and high on its own few.
"""

from __future__ import annotations

import math
from typing import Any

from agent.telemetry.quality import MAX_ROWS, confidence_bin
from protocol.compat import zip_strict
from protocol.quality import CONFIDENCE_BINS
from protocol.telemetry import MAX_CLASS_BINS, MAX_CLASS_COUNTS

MAX_CLASSES = 1000  # a 2-D float output with 2..MAX_CLASSES columns is treated as class scores
# What the operator declared at push (`edgectl push --task`, the desired model's `task`): None detects from the shape
# (a 2-D float output of 2..MAX_CLASSES columns is class scores), "classifier" takes every float output's last axis
# as class scores whatever its rank ([N, 1, 10], [N, 10, 1, 1] -> [N, 10]; [N, 1] sigmoid -> 2 columns: p and 1-p
# are not made up, a 1-column output stays a regression), "regression" never counts classes.
TASKS = ("classifier", "regression")
TOLERANCE = 1e-3  # a row sums to 1 within this: a distribution (float32 softmax over 1,000 classes: about 1e-6)


def class_scores(array: Any, task: str | None) -> Any:
    """The output as [rows, classes] scores where it is a classifier's (by `task`, else by its shape), else None."""
    if task == "regression" or getattr(getattr(array, "dtype", None), "kind", "") != "f" or array.ndim == 0:
        return None
    if task == "classifier":
        squeezed = array.reshape(array.shape[0], -1) if array.ndim > 2 else array
        width = squeezed.shape[-1]
        return squeezed.reshape(-1, width) if 2 <= width <= MAX_CLASSES else None
    return array if array.ndim == 2 and 2 <= array.shape[1] <= MAX_CLASSES else None


class ClassMix:
    """Predicted classes counted by index, the top-1 confidence histogram, and whether every row was a distribution."""

    __slots__ = ("counts", "hist", "top1_sum", "top1_n", "logits")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.hist: list[int] | None = None
        self.top1_sum = 0.0
        self.top1_n = 0
        self.logits = False  # a counted row was not a distribution

    def add_rows(self, rows: list[list[float]]) -> None:
        """A few rows as Python lists (a small output: cheaper than numpy calls)."""
        exp = math.exp
        for row in rows:
            best = max(row)
            if min(row) < 0 or abs(sum(row) - 1.0) > TOLERANCE:  # logits: softmax of the top class
                self.logits = True
                best_p = 1.0 / sum(exp(v - best) for v in row)
            else:
                best_p = best
            self.count(row.index(best), best_p)

    def add_array(self, scores: Any, max_elements: int) -> None:
        """[rows, classes] scores; a large batch on a stride of its rows: at most MAX_ROWS (the rows the per-element
        summary takes, so both count alike) or `max_elements` values, whichever allows more rows."""
        import numpy as np  # already loaded: a model is serving

        rows = max(MAX_ROWS, max_elements // scores.shape[1])  # as many rows as the per-element summary, or more
        if scores.shape[0] > rows:
            scores = scores[:: -(-scores.shape[0] // rows)]
        top = scores.argmax(axis=1)
        best = scores[np.arange(len(top)), top].astype(np.float64)
        if scores.min() < 0 or abs(scores.sum(axis=1, dtype=np.float64) - 1.0).max() > TOLERANCE:
            self.logits = True
            best = 1.0 / np.exp(scores - best[:, None]).sum(axis=1, dtype=np.float64)
        if len(top) <= 16:
            for cls, conf in zip_strict(top.tolist(), best.tolist()):
                self.count(cls, conf)
            return
        self.top1_sum += float(best.sum())  # a large batch: counted with numpy, not row by row
        self.top1_n += int(best.size)
        bins = np.minimum((best * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1).clip(0)
        hist = np.bincount(bins, minlength=CONFIDENCE_BINS).tolist()
        self.hist = [a + b for a, b in zip_strict(self.hist or [0] * CONFIDENCE_BINS, hist)]
        counts, found = self.counts, np.bincount(top)
        for cls in np.flatnonzero(found).tolist():
            counts[cls] = counts.get(cls, 0) + int(found[cls])

    def count(self, cls: int, confidence: float) -> None:
        self.top1_sum += confidence
        self.top1_n += 1
        hist = self.hist
        if hist is None:
            hist = self.hist = [0] * CONFIDENCE_BINS
        hist[confidence_bin(confidence)] += 1
        self.counts[cls] = self.counts.get(cls, 0) + 1

    def wire(self, declared: bool) -> dict[str, Any]:
        """The OutputStats fields: classes, class_counts, scores, top1_mean, top1_hist (empty: nothing counted)."""
        if not self.top1_n:
            return {}
        counts = self.counts
        fields: dict[str, Any] = {
            "scores": "declared" if declared else "logits" if self.logits else "probabilities",
            "top1_mean": self.top1_sum / self.top1_n,
            "top1_hist": self.hist,
        }
        if len(counts) < MAX_CLASS_BINS:
            fields["classes"] = {str(k): v for k, v in sorted(counts.items())}
            return fields
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        named = {str(k): v for k, v in ranked[: MAX_CLASS_BINS - 1]}
        named["other"] = sum(v for _, v in ranked[MAX_CLASS_BINS - 1 :])
        fields["classes"] = named
        fields["class_counts"] = sorted(counts.items())[:MAX_CLASS_COUNTS]  # all: MAX_CLASSES < MAX_CLASS_COUNTS
        return fields
