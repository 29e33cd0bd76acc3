"""The checks a version passes before it replaces the serving one: finite answers, no latency regression."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.timing import best_ms
from protocol.errors import EdgeError
from targets.agreement import nonfinite

if TYPE_CHECKING:
    from agent.serving import LoadedModel

BENCH_RUNS = 30  # per model and pass, in rounds of a third
MIN_REGRESSION_MS = 0.5  # below this the difference is noise, whatever the percentage


class Unhealthy(EdgeError):
    """A loaded version that must not replace the serving one; `code` says which check it failed."""

    code = "unhealthy"


def check_before_swap(model: LoadedModel, serving: LoadedModel | None, max_latency_pct: float) -> None:
    """Raise Unhealthy for a version that answers NaN/Inf, or runs much slower than the one serving (0: no limit)."""
    for inputs in model.probe:
        bad = nonfinite(model.backend.infer(inputs))
        if bad:
            raise Unhealthy(f"{bad} on a warm-up inference; the serving version stays", "nonfinite_output")
    if serving is not None and max_latency_pct:
        regression = latency_regression(model, serving, max_latency_pct)
        if regression:
            raise Unhealthy(f"{regression}; the serving version stays", "latency_regression")


def latency_regression(new: LoadedModel, old: LoadedModel, max_pct: float) -> str | None:
    """Compare p95 on the models' representative inputs in alternating rounds, so load on the box hits both alike; a
    regression must show in two passes before it counts (a burst of other work on a small board is not the new
    version's fault). Different backends: the selection already chose the fastest for the new version."""
    if new.backend.label != old.backend.label or not new.probe or not old.probe:
        return None
    runs = BENCH_RUNS // 3
    for _ in range(2):
        new_p95, old_p95 = best_ms([new, old], q=95, rounds=4, min_runs=runs, max_runs=runs)
        if not (new_p95 > old_p95 * (1 + max_pct / 100) and new_p95 - old_p95 > MIN_REGRESSION_MS):
            return None
    return (
        f"p95 latency {new_p95:.2f} ms vs {old_p95:.2f} ms for version {old.version} on {old.backend.label} "
        f"(+{(new_p95 / old_p95 - 1) * 100:.0f}%, limit +{max_pct:.0f}%)"
    )
