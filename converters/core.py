"""The exporter loop: for each asked-for variant, build it, time it, size it, compare it to the original, and report
(or report why it could not be built), without one failure stopping the others."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.calibration import Calibration, load_calibration
from converters.runtimes import OnnxRunner, OpenVinoRunner, Runner, TfliteRunner, p50_latency_ms, paired_p50_ms
from converters.variants import VARIANTS, ConversionError, Job, Variant, check_available
from protocol import ZSTD_LEVEL, worth_compressing

log = logging.getLogger("converters")

EVAL_SAMPLES = 200  # agreement is measured on at most this many calibration/validation batches


@dataclass(frozen=True)
class Thresholds:
    """A variant passes when every classifier-like output keeps `top1` agreement and every other output `cosine`."""

    top1: float = 0.99
    cosine: float = 0.99


@dataclass
class ConversionResult:
    """The report of one conversion; `as_dict()` is what the CLI prints with --json and the registry can store."""

    variant: str
    model: str
    ok: bool = False  # built and measured
    passed: bool = False  # ok and within the thresholds
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
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calibration: str = ""  # calibration data source, or "synthetic"
    validation: str = ""  # what agreement was measured on (the calibration data unless validation data was given)
    samples: int = 0

    @property
    def size_ratio(self) -> float | None:
        return self.size_bytes / self.source_size_bytes if self.ok and self.source_size_bytes else None

    @property
    def transfer_ratio(self) -> float | None:
        return self.transfer_bytes / self.source_size_bytes if self.ok and self.source_size_bytes else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"size_ratio": self.size_ratio, "transfer_ratio": self.transfer_ratio}


@contextmanager
def quiet(log_path: Path):
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


def zstd_size(path: Path, level: int = ZSTD_LEVEL) -> int | None:
    """Size of the file zstd-compressed, or None without the zstandard package."""
    try:
        import zstandard
    except ImportError:
        return None
    data = path.read_bytes()
    return len(zstandard.ZstdCompressor(level=level, threads=-1).compress(data))


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
        if ref.shape != got.shape:
            got = got.reshape(ref.shape) if got.size == ref.size else got
        if ref.shape != got.shape:
            failed.append(f"{name}: output shape {list(got.shape)} differs from the original {list(ref.shape)}")
            continue
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
        }
        classifier = ref.ndim == 2 and ref.shape[1] >= 2
        if classifier:
            metrics["top1"] = float((ref.argmax(1) == got.argmax(1)).mean())
            if metrics["top1"] < thresholds.top1:
                failed.append(
                    f"{name}: top-1 agreement {metrics['top1']:.2%} < {thresholds.top1:.2%} "
                    f"(short by {(thresholds.top1 - metrics['top1']) * 100:.2f} points)"
                )
        elif metrics["cosine"] < thresholds.cosine:
            failed.append(
                f"{name}: cosine similarity {metrics['cosine']:.4f} < {thresholds.cosine:.4f} "
                f"(short by {thresholds.cosine - metrics['cosine']:.4f})"
            )
        outputs[name] = metrics
    summary: dict[str, Any] = {"outputs": outputs}
    if outputs:
        tops = [m["top1"] for m in outputs.values() if "top1" in m]
        summary |= {
            "top1": min(tops) if tops else None,
            "cosine": min(m["cosine"] for m in outputs.values()),
            "max_abs_error": max(m["max_abs_error"] for m in outputs.values()),
            "mean_abs_error": max(m["mean_abs_error"] for m in outputs.values()),
        }
    return summary, failed


class _Session:
    """One source model and its data: prepared once, with reference outputs and per-runtime baselines cached."""

    def __init__(
        self,
        model_path: Path,
        calibration: Calibration | Path | str | None,
        options: dict[str, Any],
        validation: Calibration | Path | str | None = None,
    ) -> None:
        import onnx

        from targets.backends.onnxruntime import OnnxRuntimeBackend

        self.model_path = model_path
        self.work = Path(tempfile.mkdtemp(prefix="edgefleet-convert-"))
        self.fixes: list[str] = []
        try:
            model = onnx.load(str(model_path))
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ConversionError(f"{model_path} is not a valid ONNX model: {fx._first_line(exc)}") from exc
        fx.constants_to_initializers(model, self.fixes)
        prepared = self.work / f"{model_path.stem}.onnx"
        onnx.save(model, str(prepared))
        self.ops = fx.op_types(model)
        backend = OnnxRuntimeBackend()
        try:
            backend.load(prepared, "onnx")
        except Exception as exc:
            raise ConversionError(f"the original model does not load in ONNX Runtime: {exc}") from exc
        specs = backend.inputs
        if not isinstance(calibration, Calibration):
            calibration = load_calibration(calibration, specs)
        self.calibration = calibration
        batch = specs[0].shape[0] if specs and specs[0].shape and specs[0].shape[0] > 0 else 1
        self.job = Job(
            source=prepared,
            input_names=[s.name for s in specs],
            output_names=[s.name for s in backend.outputs],
            input_ranks={s.name: len(s.shape) for s in specs},
            calibration=calibration,
            batch=batch,
            work=self.work,
            options=options,
            ops=self.ops,
        )
        if validation is not None and not isinstance(validation, Calibration):
            validation = load_calibration(validation, specs)
        self.validation = validation or calibration
        limit = options.get("eval_samples", EVAL_SAMPLES)
        self.eval_samples = self.validation.batches(batch, limit)
        if not self.eval_samples:
            raise ConversionError(f"calibration data has fewer samples than the model's batch size {batch}")
        reference = OnnxRunner(prepared)
        self.reference = [reference.run(s) for s in self.eval_samples]
        self.source_size = model_path.stat().st_size
        packed = zstd_size(model_path)
        self.source_transfer = packed if worth_compressing(self.source_size, packed) else self.source_size
        reference.close()
        self.baselines: dict[str, tuple[Runner | None, str]] = {}
        backend.close()

    def open(self, variant: Variant, path: Path) -> Runner:
        if variant.runtime == "onnxruntime":
            return OnnxRunner(path)
        if variant.runtime == "openvino":
            return OpenVinoRunner(path)
        return TfliteRunner(path, self.job.input_names, self.job.output_names)

    def baseline(self, variant: Variant) -> tuple[Runner | None, str]:
        """The float original on the variant's runtime, kept open to be timed beside each variant: ONNX on ORT and
        OpenVINO, the float32 TFLite conversion on LiteRT; None and the reason where it does not run there."""
        if variant.runtime not in self.baselines:
            try:
                if variant.runtime == "onnxruntime":
                    self.baselines["onnxruntime"] = (OnnxRunner(self.job.source), "onnxruntime")
                elif variant.runtime == "openvino":
                    self.baselines["openvino"] = (OpenVinoRunner(self.job.source), "openvino (float ONNX)")
                else:
                    from converters.variants import _onnx2tf

                    found = _onnx2tf(self.job, integer=False)
                    runner = TfliteRunner(found["float32"], self.job.input_names, self.job.output_names)
                    self.baselines["tflite"] = (runner, "tflite (float32 conversion)")
            except Exception as exc:
                log.info("no %s baseline: %s", variant.runtime, exc)
                reason = f"{variant.runtime} (float original does not run there: {fx._first_line(exc)})"
                self.baselines[variant.runtime] = (None, reason)
        return self.baselines[variant.runtime]

    def latencies(self, variant: Variant, runner: Runner) -> tuple[float, float | None, str]:
        """p50 of the variant and of the float original on the same runtime, timed in turn; what the latter ran on."""
        baseline, label = self.baseline(variant)
        budget = self.job.options.get("latency_budget_s", 1.5)
        if baseline is None:
            return p50_latency_ms(runner, self.eval_samples[0], budget_s=budget), None, label
        mine, theirs = paired_p50_ms(runner, baseline, self.eval_samples[0], budget_s=2 * budget)
        return mine, theirs, label

    def judge(self, thresholds: Thresholds, candidate: Path) -> list[str]:
        """Failed metrics of a candidate ONNX model against the original on (at most 64 batches of) calibration data."""
        samples = self.calibration.batches(self.job.batch, 64)
        if "calibration_reference" not in self.job.cache:
            original = OnnxRunner(self.job.source)
            self.job.cache["calibration_reference"] = [original.run(s) for s in samples]
            original.close()
        runner = OnnxRunner(candidate)
        try:
            outputs = [runner.run(s) for s in samples]
        finally:
            runner.close()
        return agreement(self.job.cache["calibration_reference"], outputs, thresholds)[1]

    def close(self) -> None:
        for runner, _ in self.baselines.values():
            if runner is not None:
                runner.close()
        shutil.rmtree(self.work, ignore_errors=True)


def _run_one(session: _Session, name: str, out_dir: Path, thresholds: Thresholds) -> ConversionResult:
    if session.job.options.get("verbose"):
        return _measure(session, name, out_dir, thresholds)
    with quiet(session.work / "converters.log"):
        return _measure(session, name, out_dir, thresholds)


def _measure(session: _Session, name: str, out_dir: Path, thresholds: Thresholds) -> ConversionResult:
    result = ConversionResult(variant=name, model=str(session.model_path), source_size_bytes=session.source_size)
    result.source_transfer_bytes = session.source_transfer
    result.calibration = session.calibration.source
    result.validation = session.validation.source
    result.warnings = list(dict.fromkeys(session.calibration.notes + session.validation.notes))
    result.fixes = list(session.fixes)
    start = time.perf_counter()
    try:
        variant = check_available(name)
        result.format, result.runtime = variant.format, variant.runtime
        out = out_dir / f"{session.model_path.stem}.{name}{variant.suffix}"
        try:
            built = variant.build(session.job, out, result.fixes)
        except ConversionError:
            raise
        except Exception as exc:  # a converter's own exception: name the op when it is the culprit
            raise ConversionError(fx.unsupported_op_message(exc, session.ops, variant.name)) from exc
        result.seconds = time.perf_counter() - start
        result.path = str(built)
        result.size_bytes = built.stat().st_size
        compressed = zstd_size(built)
        if compressed is None:
            result.warnings.append("zstandard not installed: transfer size is the file size")
        result.transfer_compressed = worth_compressing(result.size_bytes, compressed)
        result.transfer_bytes = compressed if result.transfer_compressed else result.size_bytes
        try:
            runner = session.open(variant, built)
        except Exception as exc:
            reason = fx._first_line(exc)
            raise ConversionError(f"the {name} model does not load in {variant.runtime}: {reason}") from exc
        try:
            outputs = [runner.run(s) for s in session.eval_samples]
            result.latency_ms_p50, result.source_latency_ms_p50, result.baseline = session.latencies(variant, runner)
        finally:
            runner.close()
        if result.source_latency_ms_p50 and result.latency_ms_p50:
            result.speedup = result.source_latency_ms_p50 / result.latency_ms_p50
        result.samples = len(session.eval_samples)
        result.agreement, result.failed_metrics = agreement(session.reference, outputs, thresholds)
        result.ok = True
        result.passed = not result.failed_metrics
    except ConversionError as exc:
        result.error = str(exc)
    except Exception as exc:  # never let one variant stop the others
        log.exception("variant %s", name)
        result.error = f"{type(exc).__name__}: {fx._first_line(exc)}"
    if not result.seconds:
        result.seconds = time.perf_counter() - start
    return result


def convert_many(
    model_path: Path | str,
    variants: list[str],
    calibration: Calibration | Path | str | None = None,
    out_dir: Path | str = ".",
    thresholds: Thresholds | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[str, ConversionResult | None], None] | None = None,
    validation: Calibration | Path | str | None = None,
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
    options = dict(options or {})
    options.setdefault("tflite_int8_requested", "tflite-int8" in variants)
    session = _Session(model_path, calibration, options, validation)
    session.job.judge = partial(session.judge, thresholds or Thresholds())
    results = []
    try:
        for name in variants:
            if progress:
                progress(name, None)
            result = _run_one(session, name, out_dir, thresholds or Thresholds())
            results.append(result)
            if progress:
                progress(name, result)
    finally:
        session.close()
    return results


def convert(
    model_path: Path | str,
    variant: str,
    calibration: Calibration | Path | str | None = None,
    out_dir: Path | str = ".",
    thresholds: Thresholds | None = None,
    options: dict[str, Any] | None = None,
    validation: Calibration | Path | str | None = None,
) -> ConversionResult:
    """Build one variant: the controller's entry point. `result.passed` says whether it may be deployed,
    `result.failed_metrics` why not, `result.as_dict()` is the report to store with it."""
    return convert_many(model_path, [variant], calibration, out_dir, thresholds, options, validation=validation)[0]


def parse_variants(text: str) -> list[str]:
    """'int8,fp16' or 'all' -> variant names (unknown names are kept: they become results with an error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(VARIANTS)
    return list(dict.fromkeys(names))
