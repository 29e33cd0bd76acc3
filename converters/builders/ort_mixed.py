"""Static INT8 for ONNX Runtime with accuracy-driven mixed precision: calibration settings and nodes kept in float
(`nodes_to_exclude`) searched by converters.mixed, each candidate's ranges fitted on two thirds of the calibration
share and judged against the float model on the other third (out of sample) through the same runtime layer and
agreement measure as the report."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.evidence import Thresholds
from converters.job import Job
from converters.measure import load_onnx
from converters.mixed import IN_SAMPLE_MAX, MixedReport, Search, Setting, Trial, aim, inner_split, judge
from converters.report import agreement

METHODS = ("MinMax", "Entropy", "Percentile")
# ops that move or reshape values without computing: keeping them in float changes nothing worth reporting
LAYOUT_OPS = frozenset({"Shape", "Constant", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                        "Cast", "Concat", "Slice", "Gather"})  # fmt: skip
JUDGE_SAMPLES = 256  # calibration batches each candidate is judged on (out of sample), at most


class Reader:
    """ONNX Runtime CalibrationDataReader over the calibration samples."""

    def __init__(self, samples: list[dict]) -> None:
        self._samples = samples
        self._it = iter(samples)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._samples)


def settings(options: dict[str, Any]) -> list[Setting]:
    """Calibration settings to try, per-channel first (the usual winner), the long-standing default first of all."""
    methods = [m for m in options.get("calibration_methods", METHODS) if m in METHODS] or ["MinMax"]
    return [Setting(m, pc) for pc in (True, False) for m in methods]


def float_candidates(model_path: Path) -> list[str]:
    """Names of the nodes that compute (not reshape) in graph order: the layers that may stay float. Not only those
    with weights: on a MobileNet-like net much of INT8's error is in the activations between them (SE blocks, adds)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type not in LAYOUT_OPS]


def named_copy(src: Path, work: Path) -> Path:
    """`src` with every node uniquely named (nodes_to_exclude goes by name)."""
    import onnx

    model = onnx.load(str(src))
    before = [n.name for n in model.graph.node]
    fx.unique_node_names(model)
    if [n.name for n in model.graph.node] == before:
        return src
    out = work / f"{src.stem}-named.onnx"
    onnx.save(model, str(out))
    return out


def _has_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


class OrtMixed:
    """Builds and judges static INT8 candidates of one prepared model."""

    def __init__(self, job: Job, src: Path, limit: int, reduce_range: bool) -> None:
        self.job, self.src, self.reduce_range = job, src, reduce_range
        self.folder = job.work / "mixed"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        fit, judge = inner_split(job.samples())
        self.samples = fit[:limit]  # what the ranges are fitted on
        self.judge_samples = judge[: job.options.get("judge_samples", JUDGE_SAMPLES)]
        self.in_samples = self.samples[:IN_SAMPLE_MAX]
        self.reference = _outputs(job.source, self.judge_samples)
        self.in_reference = _outputs(job.source, self.in_samples)
        self.bar = job.thresholds or Thresholds()
        self.aim = aim(self.bar)
        self.cached = _has_cache()
        self.count = 0

    def quantize(self, setting: Setting, float_layers: list[str], out: Path) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        kwargs: dict[str, Any] = {}
        if self.cached:  # calibrate once per method; every candidate after reuses the ranges
            kwargs["calibration_cache_path"] = str(self.folder / f"ranges-{setting.method}.json")
        quantize_static(
            str(self.src),
            str(out),
            Reader(self.samples),
            quant_format=QuantFormat.QDQ,
            per_channel=setting.per_channel,
            reduce_range=self.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, setting.method),
            nodes_to_exclude=list(float_layers),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            **kwargs,
        )
        return out

    def attempt(self, setting: Setting, float_layers: list[str], step: str) -> Trial:
        self.count += 1
        out = self.quantize(setting, float_layers, self.folder / f"candidate-{self.count}.onnx")
        judged = judge(self.reference, _outputs(out, self.judge_samples), self.bar)
        inside, _ = agreement(self.in_reference, _outputs(out, self.in_samples), self.aim)
        return Trial.judged(step, str(setting), float_layers, judged, out.stat().st_size, out, inside)

    def report(self) -> MixedReport:
        source_size = self.job.source.stat().st_size
        rows = self.job.batch
        return MixedReport.for_job(
            self.aim, self.job.options, source_size, rows * len(self.judge_samples), rows * len(self.samples)
        )


def _outputs(path: Path, samples: list[dict]) -> list[dict]:
    model = load_onnx(path)
    try:
        return [model.run(s) for s in samples]
    finally:
        model.close()


def build_mixed(job: Job, src: Path, out: Path, limit: int, reduce_range: bool, fixes: list[str]) -> Path:
    """Static INT8: the best calibration setting, with the fewest nodes in float that reach the aim out of sample
    (ranges fitted on at most `limit` samples); the search's report goes to job.details["mixed_precision"]."""
    mixed = OrtMixed(job, named_copy(src, job.work), limit, reduce_range)
    report = mixed.report()
    fixes.append(f"calibrated on {fx.samples_text(report.fitted_on)} (given); each candidate judged on "
                 f"{fx.samples_text(report.judged_on)} of the calibration share it was not calibrated on")  # fmt: skip
    try:
        chosen = Search(mixed.attempt, report).run(settings(job.options), float_candidates(mixed.src))
        shutil.copyfile(chosen.artifact, out)
    finally:
        shutil.rmtree(mixed.folder, ignore_errors=True)
    job.details["mixed_precision"] = report.as_dict()
    fixes.append(report.summary())
    return out
