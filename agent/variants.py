"""On-device choice between a model and its optimized variants: each is loaded on the backend its own trial picked,
checked against the original on the same inputs, timed, and the fastest that agrees serves. The original is one of
the contestants, so a variant slower than it on this device never serves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.timing import percentile_ms, turn_about
from targets.tensors import synthetic_inputs

if TYPE_CHECKING:
    from agent.serving import LoadedModel
    from protocol import Transfer

MIN_COSINE = 0.99
TIMED_RUNS = 20
SETTLE_S = 0.005  # pause before each timed block in head_to_head (see agent.timing.turn_about)


@dataclass
class Artifact:
    """One file that can serve a desired model: the original (variant None) or an optimized variant."""

    variant: str | None
    sha256: str
    size: int
    format: str
    offer: Transfer | None = None  # a compressed encoding the controller holds

    @property
    def label(self) -> str:
        return self.variant or "original"


def p50_ms(model: LoadedModel, inputs: dict[str, Any], runs: int = TIMED_RUNS) -> float:
    return percentile_ms(model, inputs, runs, 50)


def head_to_head(a: LoadedModel, b: LoadedModel, rounds: int = 7, round_s: float = 0.05) -> tuple[float, float]:
    """p50 of two loaded models timed turn about after a warm-up, the best round of each: both see the same load on
    the box, and a lazy first-run cost (ONNX Runtime's int8 kernels, OpenVINO's first infer) is not counted."""
    a_inputs, b_inputs = synthetic_inputs(a.backend.inputs), synthetic_inputs(b.backend.inputs)
    started = time.perf_counter()
    for _ in range(3):
        a.backend.infer(a_inputs)
        b.backend.infer(b_inputs)
    per_pair = (time.perf_counter() - started) / 3
    runs = max(3, min(TIMED_RUNS // 2, int(round_s / max(per_pair, 1e-6))))
    return turn_about(a, b, runs=runs, rounds=rounds, q=50, settle_s=SETTLE_S)


def cosine(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        return 0.0
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denominator) if denominator else float(np.allclose(x, y))


def agreement(original: LoadedModel, candidate: LoadedModel) -> float | None:
    """Cosine similarity of the first output on the same synthetic inputs; None when the signatures differ."""
    if [(s.name, s.shape) for s in original.backend.inputs] != [(s.name, s.shape) for s in candidate.backend.inputs]:
        return None  # e.g. a TFLite variant taking NHWC: agreement was measured on the controller
    inputs = synthetic_inputs(original.backend.inputs, seed=7)
    want = next(iter(original.backend.infer(inputs).values()))
    got = next(iter(candidate.backend.infer(inputs).values()))
    return cosine(want, got)


def describe(results: list[dict[str, Any]], winner: dict[str, Any]) -> str:
    original = next((r for r in results if r["variant"] == "original" and r.get("p50_ms") is not None), None)
    head = f"{winner['variant']} on {winner['backend']}: p50 {winner['p50_ms']:.3f} ms"
    if original is not None and winner is not original:
        head += f" vs original {original['p50_ms']:.3f} ms"
    others = [r for r in results if r is not winner]
    failed = [f"{r['variant']} ({r['error']})" for r in others if r.get("error")]
    slower = [r["variant"] for r in others if not r.get("error")]
    if slower:
        head += f"; slower here: {', '.join(slower)}"
    if failed:
        head += f"; passed over: {', '.join(failed)}"
    return head
