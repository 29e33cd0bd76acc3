"""The exporter loop: for each asked-for variant, build it, time it, size it, compare it to the original, and report
(or report why it could not be built), without one failure stopping the others."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.evidence import Thresholds, unproven
from converters.job import ConversionError
from converters.report import ConversionResult, agreement, zstd_size
from converters.session import Data, Session
from converters.variants import Variant, check_available
from protocol import worth_compressing

log = logging.getLogger("converters")

SLOWER = 0.95  # a speedup under this, measured turn about with FP32 on the same runtime, is a slower variant
SLOW_HINTS = {
    "int8": "dynamic INT8 quantizes activations at run time; for a conv net use int8-static (QDQ) or openvino-int8",
    "fp16": "this CPU runs FP16 through casts; FP16 pays on GPUs and NPUs",
    "int4": "4-bit weights pay in memory, not in CPU speed, on a model this small",
}

Progress = Callable[[str, ConversionResult | None], None]


@contextmanager
def quiet(log_path: Path) -> Iterator[None]:
    """Send what converters print (onnx2tf, TensorFlow, NNCF, C++ logs) to `log_path`, at the file-descriptor level,
    so the CLI's table and --json output stay clean."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log_path, "ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def _run_one(session: Session, name: str, out_dir: Path, thresholds: Thresholds) -> ConversionResult:
    if session.job.options.get("verbose"):
        return _measure(session, name, out_dir, thresholds)
    with quiet(session.work / "converters.log"):
        return _measure(session, name, out_dir, thresholds)


def _new_result(session: Session, name: str) -> ConversionResult:
    """A report that knows the source and its data, before anything is built."""
    result = ConversionResult(variant=name, model=str(session.model_path), source_size_bytes=session.source_size)
    result.source_transfer_bytes = session.source_transfer
    result.calibration = session.calibration.source
    result.validation = session.validation.source
    result.measured_on, result.held_out = session.measured_on, session.held_out
    result.warnings = list(dict.fromkeys(session.calibration.notes + session.validation.notes))
    result.fixes = list(session.fixes)
    return result


def _build(session: Session, variant: Variant, fixes: list[str]) -> Path:
    """The variant built in the session's work directory: it reaches the output directory only once it has loaded
    and run (nothing half-built is left there)."""
    scratch = session.work / "built"
    scratch.mkdir(exist_ok=True)
    out = scratch / f"{session.model_path.stem}.{variant.name}{variant.suffix}"
    try:
        return variant.build(session.job, out, fixes)
    except ConversionError:
        raise
    except Exception as exc:  # a converter's own exception: name the op when it is the culprit
        raise ConversionError(fx.unsupported_op_message(exc, session.ops, variant.name)) from exc


def _size(result: ConversionResult, built: Path) -> None:
    """File size, and what travels: zstd-compressed when that saves enough."""
    result.path = str(built)
    result.size_bytes = built.stat().st_size
    compressed = zstd_size(built)
    if compressed is None:
        result.warnings.append("zstandard not installed: transfer size is the file size")
    result.transfer_compressed = worth_compressing(result.size_bytes, compressed)
    result.transfer_bytes = compressed if compressed is not None and result.transfer_compressed else result.size_bytes


def _run(session: Session, variant: Variant, built: Path, result: ConversionResult, thresholds: Thresholds) -> None:
    """Run the variant on the evaluation data and time it beside its float original; judge its agreement."""
    try:
        model = session.open(variant, built)
    except Exception as exc:
        reason = fx.first_line(exc)
        raise ConversionError(f"the {variant.name} model does not load in {variant.runtime}: {reason}") from exc
    try:
        outputs = [model.run(s) for s in session.eval_samples]
        result.latency_ms_p50, result.source_latency_ms_p50, result.baseline = session.latencies(variant.runtime, model)
    finally:
        model.close()
    if result.source_latency_ms_p50 and result.latency_ms_p50:
        result.speedup = result.source_latency_ms_p50 / result.latency_ms_p50
    result.samples = len(session.eval_samples)
    result.agreement, result.failed_metrics = agreement(session.reference, outputs, thresholds)
    result.ok = True
    if not result.failed_metrics:
        result.unproven = _unproven(session, result.agreement, thresholds)
    result.passed = not result.failed_metrics and not result.unproven
    result.verdict = "pass" if result.passed else "unproven" if not result.failed_metrics else "below"
    if result.speedup is not None and result.speedup < SLOWER:
        result.advice.append(
            f"slower than FP32 on this machine ({result.speedup:.2f}x on {variant.runtime}): "
            f"{SLOW_HINTS.get(variant.name, 'the float original serves faster here')}"
        )


def _unproven(session: Session, summary: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Figures at the bar that the samples measured do not vouch for (their lower bound is below it). Synthetic
    inputs only check that the variant computes like the original: their count is not evidence either way."""
    if session.calibration.synthetic and session.validation.synthetic:
        return []
    kind = "validation" if session.held_out == 0 and not session.in_sample else "held-out"
    found = unproven(summary.get("outputs", {}), thresholds, "calibration" if session.in_sample else kind)
    if session.in_sample and not found:
        found.append(f"measured on the calibration samples themselves ({len(session.calibration)}: too few to hold "
                     "any out): give more samples or --validation")  # fmt: skip
    return found


def _measure(session: Session, name: str, out_dir: Path, thresholds: Thresholds) -> ConversionResult:
    result = _new_result(session, name)
    start = time.perf_counter()
    try:
        variant = check_available(name)
        result.format, result.runtime = variant.format, variant.runtime
        thresholds = variant.thresholds or thresholds
        session.job.judge = partial(session.judge, thresholds)  # what a builder's own search (sparsity) keeps
        session.job.thresholds = thresholds
        session.job.details = {}
        try:
            built = _build(session, variant, result.fixes)
        finally:
            result.mixed_precision = session.job.details.get("mixed_precision")
        result.seconds = time.perf_counter() - start
        _size(result, built)
        _run(session, variant, built, result, thresholds)
        final = out_dir / f"{session.model_path.stem}.{variant.name}{variant.suffix}"
        shutil.move(built, final)
        result.path = str(final)
    except ConversionError as exc:
        result.error = str(exc)
    except Exception as exc:  # never let one variant stop the others
        log.exception("variant %s", name)
        result.error = f"{type(exc).__name__}: {fx.first_line(exc)}"
    if not result.seconds:
        result.seconds = time.perf_counter() - start
    return result


def convert_many(
    model_path: Path | str,
    variants: list[str],
    calibration: Data = None,
    out_dir: Path | str = ".",
    thresholds: Thresholds | None = None,
    options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    validation: Data = None,
) -> list[ConversionResult]:
    """Build every variant of one float ONNX model; a failed variant is a result with `error`, never an exception.

    calibration: .npz/.npy/directory keyed by input name (None: synthetic, with a loud warning); validation: the
    same kind of data to measure agreement on (default: the calibration data).
    options: sparsity (pruned: a fraction, or "auto", the default: the highest that keeps agreement),
    int4_block_size (32), calibration_samples, eval_samples, latency_budget_s, verbose (let the converters print).
    progress(variant, None) is called before each variant and progress(variant, result) after it.
    Raises ConversionError / CalibrationError only for problems with the model or data themselves.
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or Thresholds()
    options = dict(options or {})
    options.setdefault("tflite_int8_requested", "tflite-int8" in variants)
    session = Session(model_path, calibration, options, validation)
    results = []
    try:
        for name in variants:
            if progress:
                progress(name, None)
            result = _run_one(session, name, out_dir, thresholds)
            results.append(result)
            if progress:
                progress(name, result)
    finally:
        session.close()
    return results


def convert(
    model_path: Path | str,
    variant: str,
    calibration: Data = None,
    out_dir: Path | str = ".",
    thresholds: Thresholds | None = None,
    options: dict[str, Any] | None = None,
    validation: Data = None,
) -> ConversionResult:
    """Build one variant: the controller's entry point. `result.passed` says whether it may be deployed,
    `result.failed_metrics` why not, `result.as_dict()` is the report to store with it."""
    return convert_many(model_path, [variant], calibration, out_dir, thresholds, options, validation=validation)[0]
