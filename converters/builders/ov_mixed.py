"""OpenVINO INT8 (NNCF) with accuracy-driven mixed precision: NNCF calibration settings (range estimator, preset,
weights per channel or per tensor, bias correction, subset size) and the operations kept in float
(`nncf.IgnoredScope` by IR node name) searched by converters.mixed; each candidate calibrated on two thirds of the
calibration share, packed as the agent loads it and judged against the float model on the other third (out of
sample) through the same runtime layer and agreement as the report."""

from __future__ import annotations

import logging
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.builders.ort_mixed import JUDGE_SAMPLES
from converters.builders.ov_ir import ov_model, pack_ir, save_ir
from converters.evidence import Thresholds
from converters.job import Job
from converters.measure import load, load_onnx
from converters.mixed import IN_SAMPLE_MAX, MixedReport, Search, Setting, Trial, aim, inner_split, judge
from converters.report import agreement

log = logging.getLogger("converters")

# calibration method -> NNCF's RangeEstimatorParametersSet for activations; NNCF's own default (mean of per-sample
# min/max) first
METHODS = {"MeanMinMax": "MEAN_MINMAX", "Histogram": "HISTOGRAM", "MinMax": "MINMAX", "Percentile": "MEAN_QUANTILE"}
SEARCH_SUBSET = 128  # calibration samples NNCF collects statistics on per candidate (its cost is linear in them)
SKIP_TYPES = frozenset({"Parameter", "Constant", "Result", "Convert", "FakeQuantize", "ShapeOf", "Reshape"})


@dataclass(frozen=True)
class OvSetting(Setting):
    """An NNCF calibration: the range estimator (`method`), per-channel weights, preset, bias correction, subset."""

    preset: str = "performance"  # NNCF QuantizationPreset: performance (symmetric activations) | mixed (asymmetric)
    bias: str = "fast"  # fast | full bias correction
    subset: int = SEARCH_SUBSET

    def __str__(self) -> str:
        channels = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.method}, {channels}, {self.preset}, {self.bias} bias correction, {self.subset} samples"


def settings(options: dict[str, Any], samples: int) -> list[Setting]:
    """Each range estimator with NNCF's defaults, then the first one varied: mixed preset, full bias correction,
    per-tensor weights, every calibration sample (when there are more than the search's subset)."""
    methods = [m for m in options.get("calibration_methods", METHODS) if m in METHODS] or ["MeanMinMax"]
    subset = min(samples, int(options.get("subset_size", SEARCH_SUBSET)))
    found: list[Setting] = [OvSetting(m, True, subset=subset) for m in methods]
    if options.get("ov_variations", True):
        first = methods[0]
        found += [OvSetting(first, True, preset="mixed", subset=subset), OvSetting(first, True, bias="full",
                  subset=subset), OvSetting(first, False, subset=subset)]  # fmt: skip
        if samples > subset:
            found.append(OvSetting(first, True, subset=samples))
    return found


def quantized_ops(model: Any, known: set[str]) -> list[str]:
    """Names of the float model's operations (`known`) that NNCF quantized (an input from a FakeQuantize or from int8
    weights), in graph order: those that may stay float. Others (activations, reshapes) carry no quantizer."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in SKIP_TYPES or op.get_friendly_name() not in known:
            continue
        if any(_fake_quantize(i) is not None or _int8_weight(i) for i in op.inputs()):
            names.append(op.get_friendly_name())
    return names


def _fake_quantize(port: Any) -> Any:
    node = port.get_source_output().get_node()
    return node if node.get_type_name() == "FakeQuantize" else None


def _int8_weight(port: Any) -> bool:
    """Whether the input is int8 weights dequantized: Constant(i8) -> Convert [-> Subtract] -> Multiply."""
    import openvino as ov

    node = port.get_source_output().get_node()
    for _ in range(4):
        if node.get_type_name() == "Constant":
            return node.get_element_type() in (ov.Type.i8, ov.Type.u8)
        if node.get_type_name() not in ("Multiply", "Subtract", "Convert"):
            return False
        node = node.input(0).get_source_output().get_node()
    return False


class OvMixed:
    """Builds and judges NNCF INT8 candidates of one float model."""

    def __init__(self, job: Job, samples: list[dict], kwargs: dict[str, Any]) -> None:
        import nncf

        fit, judge = inner_split(samples)
        self.job, self.samples, self.kwargs = job, fit, kwargs
        self.folder = job.work / "ov-mixed"
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        self.base = ov_model(job)
        self.float_ops = {op.get_friendly_name(): op for op in self.base.get_ordered_ops()}
        self.dataset = nncf.Dataset(fit)
        self.judge_samples = judge[: job.options.get("judge_samples", JUDGE_SAMPLES)]
        self.in_samples = fit[:IN_SAMPLE_MAX]
        self.reference = _onnx_outputs(job.source, self.judge_samples)
        self.in_reference = _onnx_outputs(job.source, self.in_samples)
        self.bar = job.thresholds or Thresholds()
        self.aim = aim(self.bar)
        self.full: dict[Setting, Any] = {}  # full-INT8 models by setting: what the probe bypasses quantizers in
        self.count = 0
        self.seven_bit = fx.needs_reduce_range()  # x86 without VNNI: int8 kernels can saturate, as for ONNX Runtime

    def quantize(self, setting: OvSetting, float_layers: list[str]) -> Any:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
            QuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if self.seven_bit else None,
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, METHODS[setting.method]),
            weights_quantization_params=None if setting.per_channel else QuantizationParameters(per_channel=False),
        )
        scope = nncf.IgnoredScope(names=list(float_layers)) if float_layers else None
        return nncf.quantize(
            self.base.clone(), self.dataset, preset=nncf.QuantizationPreset(setting.preset), subset_size=setting.subset,
            fast_bias_correction=setting.bias == "fast", ignored_scope=scope, advanced_parameters=advanced,
            **self.kwargs,
        )  # fmt: skip

    def attempt(self, setting: Setting, float_layers: list[str], step: str) -> Trial:
        """An NNCF build with `float_layers` in its ignored scope, judged on the calibration data."""
        assert isinstance(setting, OvSetting)
        model = self.quantize(setting, float_layers)
        if not float_layers:
            self.full[setting] = model
        return self._judge(model, setting, float_layers, step, in_sample=True)

    def probe(self, setting: Setting, float_layers: list[str], step: str) -> Trial:
        """For ranking only: the full-INT8 model of `setting` with the quantizers of `float_layers` bypassed (their
        FakeQuantize inputs skipped, their int8 weights replaced by the float ones): seconds, not an NNCF run."""
        assert isinstance(setting, OvSetting)
        model = self.full[setting].clone()
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        for name in float_layers:
            op, original = ops.get(name), self.float_ops.get(name)
            if op is None or original is None:
                continue
            for index, port in enumerate(op.inputs()):
                fq = _fake_quantize(port)
                if fq is not None:
                    port.replace_source_output(fq.input(0).get_source_output())
                elif _int8_weight(port) and index < len(original.inputs()):
                    port.replace_source_output(_copy(original.input(index).get_source_output()))
        model.validate_nodes_and_infer_types()
        return self._judge(model, setting, float_layers, step)

    def _judge(
        self, model: Any, setting: OvSetting, float_layers: list[str], step: str, in_sample: bool = False
    ) -> Trial:
        """Out of sample; in sample too for a real candidate (a probe only ranks)."""
        self.count += 1
        out = pack_ir(model, self.folder / f"candidate-{self.count}.tar", self.folder, compress_to_fp16=False)
        ours, inside = self._outputs(out, in_sample)
        judged = judge(self.reference, ours, self.bar)
        summary = agreement(self.in_reference, inside, self.aim)[0] if in_sample else None
        return Trial.judged(step, str(setting), float_layers, judged, _weights_size(out), out, summary)

    def _outputs(self, tar: Path, in_sample: bool) -> tuple[list[dict], list[dict]]:
        model = load("openvino", tar, "openvino", self.job.input_names, self.job.output_names)
        try:
            out = [model.run(s) for s in self.judge_samples]
            return out, [model.run(s) for s in self.in_samples] if in_sample else []
        finally:
            model.close()

    def report(self) -> MixedReport:
        float_bin = save_ir(self.base, self.folder / "fp32", compress_to_fp16=False)
        return MixedReport.for_job(
            self.aim,
            self.job.options,
            float_bin.stat().st_size,
            self.job.batch * len(self.judge_samples),
            self.job.batch * len(self.samples),
            size_of="the IR's weights (model.bin; FP32 IR for the float model): the XML graph does not shrink",
            ranked_by="the full-INT8 model with the group's quantizers bypassed (no NNCF run)",
        )


def _copy(output: Any) -> Any:
    """A float model's weights as a new constant (a node is not shared between two models), else the output as is."""
    from openvino import opset13

    node = output.get_node()
    return opset13.constant(node.get_data()).output(0) if node.get_type_name() == "Constant" else output


def _weights_size(tar: Path) -> int:
    with tarfile.open(tar) as packed:
        return packed.getmember("model.bin").size


def _onnx_outputs(path: Path, samples: list[dict]) -> list[dict]:
    model = load_onnx(path)
    try:
        return [model.run(s) for s in samples]
    finally:
        model.close()


def build_mixed(job: Job, out: Path, samples: list[dict], kwargs: dict[str, Any], fixes: list[str]) -> Path:
    """NNCF INT8: the best calibration setting, with the fewest operations in NNCF's ignored scope that reach the aim
    on calibration data; the search's report goes to job.details["mixed_precision"]."""
    mixed = OvMixed(job, samples, kwargs)
    if mixed.seven_bit:
        fixes.append("NNCF overflow fix: 7-bit weights (x86 without VNNI, where int8 kernels can saturate)")
    try:
        report = mixed.report()
        found = settings(job.options, len(mixed.samples))
        cached: dict[Setting, Trial] = {}

        def attempt(setting: Setting, float_layers: list[str], step: str) -> Trial:
            if not float_layers and setting in cached:
                return cached.pop(setting)
            return mixed.attempt(setting, float_layers, step)

        search = Search(attempt, report, probe=mixed.probe)  # its clock starts here
        cached[found[0]] = mixed.attempt(found[0], [], f"full INT8, {found[0]}")
        layers = quantized_ops(
            mixed.full[found[0]], set(mixed.float_ops)
        )  # its quantizers say which operations may stay float
        chosen = search.run(found, layers)
        shutil.copyfile(chosen.artifact, out)
    finally:
        shutil.rmtree(mixed.folder, ignore_errors=True)
    job.details["mixed_precision"] = report.as_dict()
    fixes.append(report.summary())
    return out
