"""OpenVINO variants: the IR (FP16-stored weights), and INT8 by NNCF post-training quantization, accuracy-controlled
when real calibration data says plain INT8 costs agreement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.builders.ov_ir import ov_model as _ov_model
from converters.builders.ov_ir import pack_ir as _pack_ir
from converters.evidence import Thresholds
from converters.job import Job
from converters.report import agreement

OV_MAX_DROP = 0.005  # agreement (top-1, or cosine) the accuracy-controlled INT8 model may lose on calibration data

Scorer = Callable[..., float]


ANSWER_TOLERANCE = 1e-3  # rtol and atol: the float IR answers as ONNX Runtime does, or its weights stay FP32
CHECK_SAMPLES = 8
# ops that quantize activations as the model runs: two runtimes round those apart (issue 28, bench/README.md)
RUNTIME_QUANTIZED = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger"})


def build_openvino(job: Job, out: Path, fixes: list[str]) -> Path:
    """The float IR, weights stored as FP16 (OpenVINO's default) unless that moves its answers on the calibration
    samples past ANSWER_TOLERANCE of ONNX Runtime's where FP32 storage keeps them within it (issue 28). Synthetic
    samples cannot vouch for FP16: ppocr_v4_det's FP16 IR was within it on random 224x224 inputs and 0.047 off on a
    rendered page, so without real data the weights stay FP32."""
    model = _ov_model(job)
    quantized = sorted(job.ops & RUNTIME_QUANTIZED)
    if quantized:
        fixes.append(
            f"the source is already INT8 ({', '.join(quantized)}): it quantizes activations at run time and "
            "OpenVINO rounds some apart from ONNX Runtime (its DynamicQuantizeLSTM does not quantize them at all), "
            f"so answers may differ past {ANSWER_TOLERANCE:g}: "
            "the source's own rounding, not the conversion (bench/README.md measures it in quantization steps)"
        )
    if job.calibration.synthetic:
        fixes.append(
            "IR weights stored as FP32: no real samples to show FP16 storage keeps answers within "
            f"{ANSWER_TOLERANCE:g} of ONNX Runtime's (random inputs do not exercise a model's real ranges)"
        )
        return _pack_ir(model, out, job.work, compress_to_fp16=False)
    packed = _pack_ir(model, out, job.work, compress_to_fp16=True)
    fp16 = _deviation(job, packed)
    if fp16 <= ANSWER_TOLERANCE:
        fixes.append("IR weights stored as FP16 (OpenVINO's default; CPU computes in FP32)")
        return packed
    packed = _pack_ir(model, out, job.work, compress_to_fp16=False)
    fp32 = _deviation(job, packed)
    if fp32 <= ANSWER_TOLERANCE or fp32 < fp16:
        fixes.append(f"IR weights stored as FP32: FP16 storage moved answers by {fp16:.2g} (relative to ONNX Runtime's"
                     f", over {ANSWER_TOLERANCE:g}), FP32 by {fp32:.2g}")  # fmt: skip
        return packed
    fixes.append(f"IR weights stored as FP16: answers differ from ONNX Runtime's by {fp16:.2g} either way")
    return _pack_ir(model, out, job.work, compress_to_fp16=True)


def _deviation(job: Job, packed: Path) -> float:
    """The largest |OpenVINO - ONNX Runtime| / (1 + |ONNX Runtime|) over the outputs on a few calibration samples."""
    import numpy as np

    from converters.measure import load, load_onnx

    samples = job.samples(limit=CHECK_SAMPLES)
    reference = load_onnx(job.source)
    try:
        variant = load("openvino", packed, "openvino", job.input_names, job.output_names)
    except Exception:
        reference.close()
        return 0.0  # it does not load: the report's own run says why, in one line
    worst = 0.0
    try:
        for sample in samples:
            want, got = reference.run(sample), variant.run(sample)
            for name, a in want.items():
                a, b = np.asarray(a, np.float64), np.asarray(got[name], np.float64)
                if a.size and a.shape == b.shape:
                    worst = max(worst, float(np.max(np.abs(a - b) / (1 + np.abs(a)))))
    except Exception:
        return worst  # a sample it does not run: the report's own run says why
    finally:
        reference.close()
        variant.close()
    return worst


def _looks_like_transformer(ops: set[str]) -> bool:
    """LayerNorm, or attention's Softmax + MatMul + Transpose (an MLP classifier's output Softmax is not enough)."""
    return "LayerNormalization" in ops or ({"Softmax", "MatMul", "Transpose"} <= ops and "Conv" not in ops)


def build_openvino_int8(job: Job, out: Path, fixes: list[str]) -> Path:
    """NNCF INT8. With real calibration data and `mixed_precision` on (the default), accuracy-driven: when full INT8
    misses the bar on the calibration data, other NNCF calibrations and the fewest operations in NNCF's ignored scope
    are searched (converters.builders.ov_mixed) within `mixed_budget_s` and `max_size_ratio`; with it off, NNCF's
    own accuracy control as before."""
    import nncf

    samples = job.samples(limit=job.options.get("calibration_samples", 300))
    kwargs: dict[str, Any] = {}
    if _looks_like_transformer(job.ops):
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        fixes.append("NNCF model_type=TRANSFORMER (attention/LayerNorm found)")
    if job.options.get("mixed_precision", True) and not job.calibration.synthetic:
        from converters.builders.ov_mixed import build_mixed

        fixes.append(f"NNCF post-training quantization calibrated on {fx.samples_text(len(samples))} given")
        return build_mixed(job, out, samples, kwargs, fixes)
    model = _ov_model(job)
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **kwargs)
    fixes.append(f"NNCF post-training quantization on {fx.samples_text(len(samples))}")
    if not job.calibration.synthetic:
        quantized = _keep_agreement(job, quantized, samples, kwargs, fixes)
    else:
        fixes.append("mixed precision skipped: agreement on synthetic data says nothing about real inputs")
    return _pack_ir(quantized, out, job.work, compress_to_fp16=False)


def _keep_agreement(job: Job, quantized: Any, samples: list[dict], kwargs: dict[str, Any], fixes: list[str]) -> Any:
    """Where real data says INT8 costs agreement, NNCF's accuracy control keeps the costly layers in float."""
    score = _agreement_scorer(_ov_model(job), samples)
    plain = score(quantized)
    if plain >= 1 - OV_MAX_DROP:
        return quantized
    try:
        controlled = _quantize_with_accuracy_control(_ov_model(job), samples, score, kwargs)
        kept = score(controlled)
    except Exception as exc:  # NNCF's own failure: the plain quantization stands
        fixes.append(f"NNCF accuracy control failed ({fx.first_line(exc)})")
        return quantized
    if kept > plain:
        fixes.append(f"NNCF accuracy control: agreement on calibration data {plain:.3f} -> {kept:.3f}, "
                     "the layers that cost it stay in float")  # fmt: skip
        return controlled
    fixes.append(f"NNCF accuracy control did not help ({kept:.3f} vs {plain:.3f}); plain INT8 kept")
    return quantized


def _agreement_scorer(model: Any, samples: list[dict]) -> Scorer:
    """score(ov model or compiled model) -> its agreement with the float model on the calibration samples, as the
    report measures it (converters.report.agreement): top-1 where an output is classifier-like, else cosine."""
    import numpy as np
    import openvino as ov

    core = ov.Core()

    def outputs(compiled: Any, data: list[dict]) -> list[dict]:
        return [{str(i): np.asarray(r[i]) for i in range(len(compiled.outputs))} for r in map(compiled, data)]

    by_sample = dict(zip(map(id, samples), outputs(core.compile_model(model, "CPU"), samples), strict=True))

    def score(candidate: Any, data: list[dict] | None = None) -> float:
        data = samples if data is None else data  # NNCF may validate on a subset
        compiled = candidate if isinstance(candidate, ov.CompiledModel) else core.compile_model(candidate, "CPU")
        summary, _ = agreement([by_sample[id(s)] for s in data], outputs(compiled, data), Thresholds())
        return summary["top1"] if summary.get("top1") is not None else summary["cosine"]

    return score


def _quantize_with_accuracy_control(model: Any, samples: list[dict], score: Scorer, kwargs: dict[str, Any]) -> Any:
    """NNCF's accuracy-controlled quantization, validated by agreement with the float model."""
    import nncf

    dataset = nncf.Dataset(samples)
    return nncf.quantize_with_accuracy_control(
        model, dataset, dataset, lambda compiled, data: score(compiled, data), max_drop=OV_MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(samples), **kwargs,
    )  # fmt: skip
