"""Output agreement with the trusted reference: every backend, precision and variant is judged by the same rule
against the format's own runtime at full precision, never against each other."""

from __future__ import annotations

from typing import Any

# Elementwise: |got - want| <= ATOL_ABS + ATOL_REL * max|want| + RTOL * |want|. A different exact runtime (other
# kernels, other summation order) stays well inside it; bf16 and fp16 arithmetic (0.3-12% off on real models) do not.
RTOL = 1e-3
ATOL_REL = 1e-4
ATOL_ABS = 1e-5
# Integer outputs (class indices, counts) must be equal, except where the reference itself sits on a tie.
MAX_INT_MISMATCH = 0.0


def nonfinite(outputs: dict[str, Any], inputs: dict[str, Any] | None = None) -> str | None:
    """Name the first floating-point output holding NaN/Inf; None when all are finite (or when the inputs carried
    NaN/Inf themselves, so the model is not to blame)."""
    import numpy as np

    if inputs is not None and any(
        np.asarray(a).dtype.kind == "f" and not np.isfinite(a).all() for a in inputs.values()
    ):
        return None
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return f"output {name!r} holds NaN/Inf"
    return None


def deviation(got: Any, want: Any) -> float:
    """Worst elementwise error in units of the allowed tolerance (<= 1 agrees); inf for a shape mismatch."""
    import numpy as np

    a, b = np.asarray(got), np.asarray(want)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if b.dtype.kind not in "fc" and a.dtype.kind not in "fc":
        mismatch = float(np.mean(a != b))
        return 0.0 if mismatch <= MAX_INT_MISMATCH else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & (a64 == b64)
    allowed = ATOL_ABS + ATOL_REL * float(np.nanmax(np.abs(np.where(np.isfinite(b64), b64, 0.0)))) + RTOL * np.abs(b64)
    err = np.where(both_nan | same_inf, 0.0, np.abs(a64 - b64))
    ratio = np.where(np.isnan(err), np.inf, err / allowed)
    return float(ratio.max())


def disagreement(got: dict[str, Any], want: dict[str, Any], who: str = "the reference") -> str | None:
    """None when every output of `want` is in `got` and within tolerance; else what differs, in one line."""
    import numpy as np

    for name, ref in want.items():
        if name not in got:
            return f"output {name!r} missing (it has {sorted(got)})"
        out, ref_array = np.asarray(got[name]), np.asarray(ref)
        if out.shape != ref_array.shape:
            return f"output {name!r} has shape {list(out.shape)}, {who} {list(ref_array.shape)}"
        worst = deviation(out, ref_array)
        if worst > 1.0:
            if ref_array.dtype.kind in "fc" or out.dtype.kind in "fc":
                diff = np.abs(out.astype(np.float64) - ref_array.astype(np.float64))
                if np.isnan(diff).any():
                    return f"output {name!r} differs from {who}: NaN where {who} has a number, or the reverse"
                return (
                    f"output {name!r} differs from {who} by up to {float(diff.max()):.3g} ({worst:.1f}x the tolerance)"
                )
            return f"output {name!r} differs from {who}"
    return None


def worst_deviation(got: dict[str, Any], want: dict[str, Any]) -> float:
    """The largest `deviation` over the outputs both hold (for reports and benchmarks)."""
    return max((deviation(got[n], want[n]) for n in want if n in got), default=0.0)
