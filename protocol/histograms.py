"""Latency histogram buckets shared by agent, controller and /metrics: histograms merge across windows and devices."""

from __future__ import annotations

from bisect import bisect_left

# Bucket i counts latencies in (LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]]; the last bucket is everything above
# LATENCY_BOUNDS_MS[-1]. Ten buckets per decade from 10 µs to 100 s (each bound 1.259x the previous, so a quantile
# read from the histogram is within 26% of the true value).
LATENCY_BUCKETS_PER_DECADE = 10
LATENCY_MIN_MS = 0.01
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(LATENCY_MIN_MS * 10 ** (i / LATENCY_BUCKETS_PER_DECADE), 6) for i in range(7 * LATENCY_BUCKETS_PER_DECADE + 1)
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1  # + overflow


def latency_bucket(ms: float) -> int:
    """The bucket index for a latency in milliseconds (bisect on the shared bounds)."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


def histogram_quantile(counts: dict[int, int] | list[int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram: the upper bound of the bucket holding it (capped at max_ms)."""
    items = sorted(counts.items()) if isinstance(counts, dict) else list(enumerate(counts))
    total = sum(c for _, c in items)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in items:
        seen += count
        if count and seen >= rank:
            bound = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else (max_ms or LATENCY_BOUNDS_MS[-1])
            return min(bound, max_ms) if max_ms else bound
    return max_ms
