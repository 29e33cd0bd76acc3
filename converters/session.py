"""One source model prepared once for every variant of a run: checked and fixed, its reference outputs on the
evaluation data, and its float original on each runtime, kept loaded to be timed beside each variant."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.builders.tflite import onnx2tf
from converters.calibration import Calibration, load_calibration
from converters.evidence import Thresholds, split
from converters.job import ConversionError, Job
from converters.measure import Loaded, load, load_onnx, p50_ms, paired_p50_ms
from converters.report import agreement, zstd_size
from converters.variants import Variant
from protocol import worth_compressing
from targets.tensors import TensorSpec

log = logging.getLogger("converters")

EVAL_SAMPLES = 600  # agreement is measured on at most this many held-out/validation batches (600 all agreeing
# vouch for 99.5%)
JUDGE_SAMPLES = 64  # a builder's own search (the pruned sparsity) judges on at most this many calibration batches

Data = Calibration | Path | str | None


def _data(data: Data, reference: Loaded) -> Calibration:
    """Calibration or validation data for the model; synthetic data of a size its reference runtime accepts."""
    specs = reference.backend.inputs
    return data if isinstance(data, Calibration) else load_calibration(data, specs, run=reference.run)


def _batch(specs: list[TensorSpec]) -> int:
    """The model's fixed batch size, 1 where its first axis is dynamic."""
    return specs[0].shape[0] if specs and specs[0].shape and specs[0].shape[0] > 0 else 1


def _float_original(job: Job, runtime: str) -> tuple[Path, str, str]:
    """The float original as `runtime` runs it: (file, format, what the report calls it)."""
    if runtime == "tflite":
        return onnx2tf(job, integer=False)["float32"], "tflite", "tflite (float32 conversion)"
    return job.source, "onnx", "onnxruntime" if runtime == "onnxruntime" else f"{runtime} (float ONNX)"


def _outputs(path: Path, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An ONNX model's outputs on each sample, on ONNX Runtime."""
    model = load_onnx(path)
    try:
        return [model.run(s) for s in samples]
    finally:
        model.close()


class Session:
    """The prepared source model and its data, with reference outputs and per-runtime baselines cached."""

    def __init__(self, model_path: Path, calibration: Data, options: dict[str, Any], validation: Data = None) -> None:
        self.model_path = model_path
        self.work = Path(tempfile.mkdtemp(prefix="edgefleet-convert-"))
        self.fixes: list[str] = []
        self.baselines: dict[str, tuple[Loaded | None, str]] = {}
        self.held_out = 0  # calibration samples kept out of calibration and every search
        self.in_sample = False  # too few samples to hold any out: the figures are in-sample, never a pass
        try:
            self._prepare(calibration, options, validation)
        except BaseException:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        self.source_size = model_path.stat().st_size
        packed = zstd_size(model_path)
        smaller = packed is not None and worth_compressing(self.source_size, packed)
        self.source_transfer = packed if smaller and packed is not None else self.source_size

    def _prepare(self, calibration: Data, options: dict[str, Any], validation: Data) -> None:
        prepared = self._fixed_copy()
        try:
            reference = load_onnx(prepared)
        except Exception as exc:
            raise ConversionError(f"the original model does not load in ONNX Runtime: {exc}") from exc
        try:
            self.calibration = _data(calibration, reference)
            self.validation, self.measured_on = self._held_out(validation, reference)
            self.job = self._job(prepared, reference, options)
            self.eval_samples = self.validation.batches(self.job.batch, options.get("eval_samples", EVAL_SAMPLES))
            self.measured_on = self.measured_on.replace("{n}", str(len(self.eval_samples) * self.job.batch))
            if not self.eval_samples:
                batch = self.job.batch
                raise ConversionError(f"calibration data has fewer samples than the model's batch size {batch}")
            self.reference = [reference.run(s) for s in self.eval_samples]
        finally:
            reference.close()

    def _held_out(self, validation: Data, reference: Loaded) -> tuple[Calibration, str]:
        """The data every agreement figure is measured on, and that in words ({n}: the samples used): --validation
        when given, else a share of the calibration data kept out of calibration and of every search (issue 28)."""
        if validation is not None:
            data = _data(validation, reference)
            return data, f"{{n}} samples of the validation data {data.source}"
        whole = self.calibration
        parts = split(whole, _batch(reference.backend.inputs))
        if parts is None:
            self.in_sample = True
            return whole, "the {n} calibration samples themselves (too few to hold any out)"
        self.calibration, held = parts
        self.held_out = len(held)
        kind = "synthetic inputs" if whole.synthetic else f"samples of {whole.source}"
        return held, f"{{n}} held-out {kind} ({len(held)} of {len(whole)}, never seen by calibration or any search)"

    def _fixed_copy(self) -> Path:
        """The source checked, with the fixes every builder needs, saved in the work directory."""
        import onnx

        try:
            model = onnx.load(str(self.model_path))
            onnx.checker.check_model(model)
        except Exception as exc:
            raise ConversionError(f"{self.model_path} is not a valid ONNX model: {fx.load_problem(exc)}") from exc
        fx.constants_to_initializers(model, self.fixes)
        prepared = self.work / f"{self.model_path.stem}.onnx"
        onnx.save(model, str(prepared))
        self.ops = fx.op_types(model)
        return prepared

    def _job(self, prepared: Path, reference: Loaded, options: dict[str, Any]) -> Job:
        specs = reference.backend.inputs
        batch = _batch(specs)
        return Job(
            source=prepared,
            input_names=[s.name for s in specs],
            output_names=[s.name for s in reference.backend.outputs],
            input_ranks={s.name: len(s.shape) for s in specs},
            calibration=self.calibration,
            batch=batch,
            work=self.work,
            options=options,
            ops=self.ops,
        )

    def open(self, variant: Variant, path: Path) -> Loaded:
        """A built variant loaded where a device would run it."""
        return load(variant.runtime, path, variant.format, self.job.input_names, self.job.output_names)

    def baseline(self, runtime: str) -> tuple[Loaded | None, str]:
        """The float original on `runtime`, kept open to be timed beside each variant: ONNX on ORT and OpenVINO, the
        float32 TFLite conversion on LiteRT; None and the reason where it does not run there."""
        if runtime not in self.baselines:
            try:
                path, model_format, label = _float_original(self.job, runtime)
                loaded = load(runtime, path, model_format, self.job.input_names, self.job.output_names)
                self.baselines[runtime] = (loaded, label)
            except Exception as exc:
                log.info("no %s baseline: %s", runtime, exc)
                reason = f"{runtime} (float original does not run there: {fx.first_line(exc)})"
                self.baselines[runtime] = (None, reason)
        return self.baselines[runtime]

    def latencies(self, runtime: str, model: Loaded) -> tuple[float, float | None, str]:
        """p50 of the variant and of the float original on the same runtime, timed in turn; what the latter ran on."""
        baseline, label = self.baseline(runtime)
        budget = self.job.options.get("latency_budget_s", 1.5)
        if baseline is None:
            return p50_ms(model, self.eval_samples[0], budget_s=budget), None, label
        mine, theirs = paired_p50_ms(model, baseline, self.eval_samples[0], budget_s=2 * budget)
        return mine, theirs, label

    def judge(self, thresholds: Thresholds, candidate: Path) -> list[str]:
        """Failed metrics of a candidate ONNX model against the original on (at most 64 batches of) calibration data."""
        samples = self.calibration.batches(self.job.batch, JUDGE_SAMPLES)
        if "calibration_reference" not in self.job.cache:
            self.job.cache["calibration_reference"] = _outputs(self.job.source, samples)
        return agreement(self.job.cache["calibration_reference"], _outputs(candidate, samples), thresholds)[1]

    def close(self) -> None:
        for loaded, _ in self.baselines.values():
            if loaded is not None:
                loaded.close()
        shutil.rmtree(self.work, ignore_errors=True)
