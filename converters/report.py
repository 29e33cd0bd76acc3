"""The report of one conversion and how it is judged: size, transfer size, latency, and agreement with the original
(top-1 for classifier-like outputs, cosine for the others) against the thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters.evidence import Thresholds, Z, mean_lower
from protocol import ZSTD_LEVEL
from stats.proportion import wilson_lower
from targets.agreement import nonfinite

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ConversionResult:
    """The report of one conversion; `as_dict()` is what the CLI prints with --json and the registry can store."""

    variant: str
    model: str
    ok: bool = False  # built and measured
    passed: bool = False  # ok, within the thresholds, and the sample count vouches for it (not unproven)
    verdict: str = "failed"  # pass | unproven (keeps the bar, too few samples to say so) | below | failed
    path: str | None = None
    format: str = ""
    runtime: str = ""
    error: str | None = None
    seconds: float = 0.0
    size_bytes: int = 0
    source_size_bytes: int = 0
    transfer_bytes: int = 0  # what travels: zstd-compressed when that saves enough (protocol.worth_compressing)
    source_transfer_bytes: int = 0
    transfer_compressed: bool = False
    latency_ms_p50: float | None = None
    source_latency_ms_p50: float | None = None  # the float original on the same runtime
    baseline: str = ""  # what the source latency was measured on
    speedup: float | None = None
    agreement: dict[str, Any] = field(default_factory=dict)  # summary + per output metrics
    failed_metrics: list[str] = field(default_factory=list)
    unproven: list[str] = field(default_factory=list)  # figures at the bar whose lower bound is not, and what settles
    advice: list[str] = field(default_factory=list)  # measured reasons to prefer another variant (slower than FP32)
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = ""  # calibration data source, or "synthetic"
    validation: str = ""  # what agreement was measured on (the calibration data unless validation data was given)
    samples: int = 0
    measured_on: str = ""  # in words: which samples every agreement figure was measured on, how many, never seen by
    held_out: int = 0  # samples of the calibration data kept out of calibration and every search (0: --validation)
    # accuracy-driven mixed precision (converters.mixed): settings tried, agreement per step, the layers kept in
    # float and why, why the search stopped; None where the variant did not search
    mixed_precision: dict[str, Any] | None = None

    @property
    def size_ratio(self) -> float | None:
        return self.size_bytes / self.source_size_bytes if self.ok and self.source_size_bytes else None

    @property
    def transfer_ratio(self) -> float | None:
        return self.transfer_bytes / self.source_size_bytes if self.ok and self.source_size_bytes else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"size_ratio": self.size_ratio, "transfer_ratio": self.transfer_ratio}


def zstd_size(path: Path, level: int = ZSTD_LEVEL) -> int | None:
    """Size of the file zstd-compressed, or None without the zstandard package."""
    try:
        import zstandard
    except ImportError:
        return None
    data = path.read_bytes()
    return len(zstandard.ZstdCompressor(level=level, threads=-1).compress(data))


def _metrics(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Max/mean abs error and row-wise cosine (mean and min) for one output; top-1 agreement for [N, classes]."""
    import numpy as np

    diff = np.abs(ref - got)
    a, b = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.where(both_zero, 1.0, (a * b).sum(1) / np.maximum(norms, 1e-30))
    metrics: dict[str, Any] = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "cosine": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "cosine_lower": mean_lower(cosine),
        "rows": len(ref),  # what each figure was measured on
    }
    if ref.ndim == 2 and ref.shape[1] >= 2:  # classifier-like
        agree = int((ref.argmax(1) == got.argmax(1)).sum())
        metrics["top1"] = agree / len(ref) if len(ref) else 0.0
        metrics["top1_lower"] = wilson_lower(agree, len(ref), Z)
    return metrics


def _shortfall(name: str, metrics: dict[str, Any], thresholds: Thresholds) -> str | None:
    """The failed check of one output, saying by how much; None when it keeps its threshold."""
    if "top1" in metrics:
        if metrics["top1"] < thresholds.top1:
            return (
                f"{name}: top-1 agreement {metrics['top1']:.2%} < {thresholds.top1:.2%} "
                f"(short by {(thresholds.top1 - metrics['top1']) * 100:.2f} points)"
            )
        return None
    if metrics["cosine"] < thresholds.cosine:
        return (
            f"{name}: cosine similarity {metrics['cosine']:.4f} < {thresholds.cosine:.4f} "
            f"(short by {thresholds.cosine - metrics['cosine']:.4f})"
        )
    return None


def _unusable(name: str, ref: np.ndarray, got: np.ndarray) -> str | None:
    """Why an output cannot be compared at all: another shape, or NaN/Inf where the original is finite."""
    if ref.shape != got.shape:
        return f"{name}: output shape {list(got.shape)} differs from the original {list(ref.shape)}"
    if nonfinite({name: got}) and not nonfinite({name: ref}):
        return f"{name}: {nonfinite({name: got})} where the original's is finite"
    return None


def _summary(outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The worst of each metric over the outputs, beside the per-output metrics."""
    summary: dict[str, Any] = {"outputs": outputs}
    if outputs:
        tops = [m["top1"] for m in outputs.values() if "top1" in m]
        lows = [m["top1_lower"] for m in outputs.values() if "top1_lower" in m]
        summary |= {
            "top1": min(tops) if tops else None,
            "top1_lower": min(lows) if lows else None,
            "cosine": min(m["cosine"] for m in outputs.values()),
            "cosine_lower": min(m["cosine_lower"] for m in outputs.values()),
            "rows": min(m["rows"] for m in outputs.values()),
            "max_abs_error": max(m["max_abs_error"] for m in outputs.values()),
            "mean_abs_error": max(m["mean_abs_error"] for m in outputs.values()),
        }
    return summary


def agreement(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]], thresholds: Thresholds
) -> tuple[dict[str, Any], list[str]]:
    """Metrics per output (top-1 agreement for [N, classes] outputs; max/mean abs error and cosine for all) and the
    list of failed checks, each saying by how much."""
    import numpy as np

    outputs: dict[str, Any] = {}
    failed: list[str] = []
    for name in reference[0]:
        ref = np.concatenate([r[name] for r in reference]).astype(np.float64)
        got = np.concatenate([c[name] for c in candidate]).astype(np.float64)
        if ref.shape != got.shape and got.size == ref.size:
            got = got.reshape(ref.shape)
        problem = _unusable(name, ref, got)
        if problem is None:
            outputs[name] = _metrics(ref, got)
            problem = _shortfall(name, outputs[name], thresholds)
        if problem is not None:
            failed.append(problem)
    return _summary(outputs), failed
