"""Latency of loaded models on their representative inputs, alone or turn about: the one yardstick the agent uses to
choose a variant and to refuse a new version that runs slower than the one serving."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.serving import LoadedModel


def percentile_ms(model: LoadedModel, inputs: dict[str, Any], runs: int, q: float) -> float:
    """The q-th percentile of `runs` timed inferences, in milliseconds."""
    import numpy as np

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.backend.infer(inputs)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, q))


def turn_about(
    a: LoadedModel, b: LoadedModel, *, runs: int, rounds: int, q: float, settle_s: float = 0.0
) -> tuple[float, float]:
    """The best q-th percentile of each of two models, their blocks taken in turn (see round_robin)."""
    a_best, b_best = round_robin([a, b], runs=runs, rounds=rounds, q=q, settle_s=settle_s)
    return a_best, b_best


def round_robin(
    models: list[LoadedModel], *, runs: int | list[int], rounds: int, q: float, settle_s: float = 0.0
) -> list[float]:
    """The best q-th percentile of each model over `rounds` blocks of `runs` (one count for all, or one per model),
    the models' blocks taken in turn, so load on the box hits them all alike. With `settle_s`, each block waits that
    long and runs twice untimed first: the other runtime's worker threads spin for a while after its last run (ONNX
    Runtime, XNNPACK)."""
    inputs = [model.sample() or {} for model in models]

    counts = runs if isinstance(runs, list) else [runs] * len(models)
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = min(best[i], _block(model, inputs[i], counts[i], q, settle_s))
    return best


def _block(model: LoadedModel, inputs: dict[str, Any], runs: int, q: float, settle_s: float) -> float:
    if settle_s:
        time.sleep(settle_s)
        for _ in range(2):
            model.backend.infer(inputs)
    return percentile_ms(model, inputs, runs, q)
