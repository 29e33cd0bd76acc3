"""How sure a measured proportion is: the Wilson score interval, one copy for the rollout error gate and the
conversion figures (it stays honest at 0 or n of n, where the normal approximation collapses to a point)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of `successes` of `n` at normal quantile `z` (1.6449: each bound
    one-sided 95%, the pair a two-sided 90%; 1.96: two-sided 95%); (0, 1) without samples."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def wilson_lower(successes: int, n: int, z: float) -> float:
    """The interval's lower bound alone: what a rate of `successes` of `n` can be said to be at least; 0 without
    samples."""
    return wilson_interval(successes, n, z)[0]
