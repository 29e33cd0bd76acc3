"""What a conversion's figures stand on: the share of the given samples held out of calibration and of every search,
and how sure a figure measured there is (a one-sided 95% lower bound: Wilson's for top-1 agreement, the normal one
for mean cosine), so a variant the held-out set is too small to vouch for is `unproven`, not `pass`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stats.proportion import wilson_lower

if TYPE_CHECKING:
    import numpy as np

    from converters.calibration import Calibration

log = logging.getLogger("converters")


@dataclass(frozen=True)
class Thresholds:
    """A variant passes when every classifier-like output keeps `top1` agreement and every other output `cosine`."""

    top1: float = 0.99
    cosine: float = 0.99


HOLDOUT_SHARE = 0.25  # of the given samples, never seen by calibration nor by any search
HOLDOUT_MIN = 20  # held out at least this many samples (at most half of them when fewer than twice as many are given)
CALIBRATION_KEEP = 384  # what calibration and its search use at most; past it, up to half goes to the held-out share
Z = 1.6449  # one-sided 95%
CONFIDENCE = "95%"
SPLIT_SEED = 28  # the split is a fixed shuffle: the same data gives the same split, ordered data is mixed
MAX_SETTLE = 10**7


def holdout_count(total: int, batch: int = 1) -> int:
    """How many of `total` samples to hold out: HOLDOUT_SHARE, at least HOLDOUT_MIN, and what calibration cannot use
    past CALIBRATION_KEEP (more evidence), never over half; whole batches."""
    count = max(math.ceil(HOLDOUT_SHARE * total), min(HOLDOUT_MIN, total // 2), total - CALIBRATION_KEEP)
    count = min(count, total // 2) if total - count < CALIBRATION_KEEP else count
    return (count // batch) * batch


def split(data: Calibration, batch: int = 1, seed: int = SPLIT_SEED) -> tuple[Calibration, Calibration] | None:
    """(calibration share, held-out share) of `data`, by a fixed shuffle of its samples; None when it holds too few
    samples to keep a batch on each side."""
    import numpy as np

    from converters.calibration import Calibration

    total = len(data)
    held = holdout_count(total, batch)
    if held < batch or total - held < batch:
        return None
    order = np.random.default_rng(seed).permutation(total)
    held_rows, kept_rows = np.sort(order[:held]), np.sort(order[held:])
    kept = Calibration({k: a[kept_rows] for k, a in data.arrays.items()}, data.source, list(data.notes))
    out = Calibration({k: a[held_rows] for k, a in data.arrays.items()}, data.source, list(data.notes))
    log.info("held out %d of %d samples of %s", held, total, data.source)
    return kept, out


def samples_to_settle(rate: float, bar: float, z: float = Z) -> int | None:
    """The fewest samples at which an agreement `rate` would have its Wilson lower bound reach `bar`; None when no
    count does (the rate is at or below the bar)."""
    if rate <= bar:
        return None
    lo, hi = 1, 1
    while wilson_lower(round(rate * hi), hi, z) < bar:
        hi *= 2
        if hi > MAX_SETTLE:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if wilson_lower(round(rate * mid), mid, z) < bar else (lo, mid)
    return lo


def mean_lower(values: np.ndarray, z: float = Z) -> float:
    """Lower bound of a mean (normal approximation): what a mean cosine can be said to be at least."""
    import numpy as np

    if len(values) < 2:
        return float(values.min()) if len(values) else 0.0
    return float(values.mean() - z * np.std(values, ddof=1) / math.sqrt(len(values)))


def unproven(outputs: dict[str, dict[str, Any]], thresholds: Thresholds, kind: str = "held-out") -> list[str]:
    """Per output whose figure keeps the bar but whose lower bound does not: what was measured on how many `kind`
    samples, the bound, and (top-1) how many samples would settle it."""
    found = []
    for name, m in outputs.items():
        rows = int(m.get("rows", 0))
        if "top1" in m:
            if m["top1"] < thresholds.top1 or m["top1_lower"] >= thresholds.top1:
                continue
            need = samples_to_settle(m["top1"], thresholds.top1)
            settle = f"~{need} samples at this agreement would settle it" if need else "no sample count settles it"
            found.append(
                f"{name}: top-1 {m['top1']:.2%} on {rows} {kind} samples, {CONFIDENCE} lower bound "
                f"{m['top1_lower']:.2%} < {thresholds.top1:.2%}: {settle}"
            )
        elif thresholds.cosine <= m["cosine"] and m.get("cosine_lower", 1.0) < thresholds.cosine:
            found.append(
                f"{name}: cosine {m['cosine']:.4f} on {rows} {kind} samples, {CONFIDENCE} lower bound "
                f"{m['cosine_lower']:.4f} < {thresholds.cosine:.4f}: more samples (or a spread this wide: a worse "
                "variant) would settle it"
            )
    return found
