"""ONNX-to-ONNX variants for ONNX Runtime: dynamic and static INT8, FP16, 4-bit MatMul weights, magnitude pruning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from converters import fixes as fx
from converters.job import ConversionError, Job

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

SPARSITY_LADDER = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
WEIGHTED_OPS = frozenset({"Conv", "MatMul", "Gemm", "ConvTranspose"})


def _preprocessed(job: Job, fixes: list[str], minimum_opset: int = 0) -> Path:
    """The model upgraded to `minimum_opset` when older, then through ORT's quantization pre-processing."""
    import onnx

    key = f"pre{minimum_opset}"
    if key not in job.cache:
        notes: list[str] = []
        model = onnx.load(str(job.source))
        upgraded = fx.upgrade_opset(model, minimum_opset, notes) if minimum_opset else model
        src = job.source
        if upgraded is not model:
            src = job.work / f"opset{minimum_opset}.onnx"
            onnx.save(upgraded, str(src))
        out = fx.ort_preprocess(src, job.work / f"{key}.onnx", notes)
        job.cache[key] = (out, notes)
    out, notes = job.cache[key]
    fixes.extend(notes)
    return out


def _reduce_range(fixes: list[str]) -> bool:
    if fx.needs_reduce_range():
        fixes.append("reduce_range: 7-bit weights (x86 without VNNI, where int8 kernels can saturate)")
        return True
    return False


def build_int8(job: Job, out: Path, fixes: list[str]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _preprocessed(job, fixes)
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, reduce_range=_reduce_range(fixes))
    return out


def build_int8_static(job: Job, out: Path, fixes: list[str]) -> Path:
    """Static INT8 (QDQ). With real calibration data and `mixed_precision` on (the default), accuracy-driven: when
    full INT8 misses the bar on the calibration data, other calibration settings and the fewest nodes kept in float
    are searched (converters.builders.ort_mixed) within `mixed_budget_s` and `max_size_ratio`."""
    from converters.builders.ort_mixed import Reader, build_mixed

    src = _preprocessed(job, fixes, fx.MIN_QDQ_OPSET)
    limit = job.options.get("calibration_samples", 256)
    samples = job.samples(limit=limit)
    reduce_range = _reduce_range(fixes)
    origin = "synthetic" if job.calibration.synthetic else "given"
    if job.options.get("mixed_precision", True) and not job.calibration.synthetic:
        return build_mixed(job, src, out, limit, reduce_range, fixes)
    fixes.append(f"calibrated on {fx.samples_text(len(samples) * job.batch)} ({origin})")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(out),
        Reader(samples),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    if job.calibration.synthetic:
        fixes.append("mixed precision skipped: agreement on synthetic data says nothing about real inputs")
    return out


def build_fp16(job: Job, out: Path, fixes: list[str]) -> Path:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(job.source))
    fx.unique_node_names(model)  # unnamed nodes make the converter's Cast names collide
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    renamed = fx.unique_node_names(converted)  # its Casts at the IO edges can share a name
    if renamed:
        fixes.append(f"renamed {renamed} node(s) the FP16 converter gave duplicate names")
    onnx.save(converted, str(out))
    fixes.append("float32 inputs/outputs kept (Cast at the edges)")
    return out


def build_int4(job: Job, out: Path, fixes: list[str]) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    block = int(job.options.get("int4_block_size", 32))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(job.source)), bits=4, block_size=block, is_symmetric=True)
    quantizer.process()
    model = quantizer.model.model
    count = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    if not count:
        raise ConversionError(
            "int4 found no MatMul with a constant 2-D weight to quantize (it is for MatMul-heavy models; "
            f"this one has {', '.join(sorted(job.ops))})"
        )
    onnx.save(model, str(out))
    fixes.append(f"{count} MatMul -> MatMulNBits (4-bit weights, block {block}, symmetric)")
    return out


def build_pruned(job: Job, out: Path, fixes: list[str]) -> Path:
    """Magnitude pruning at the given sparsity, or with `sparsity="auto"` (the default) the highest sparsity on
    SPARSITY_LADDER that still meets the thresholds on the calibration data: pruning without fine-tuning costs
    accuracy quickly on small nets, so a fixed 50% is often refused."""
    requested = job.options.get("sparsity", "auto")
    if requested in (None, "auto"):
        return _search_sparsity(job, out, fixes)
    sparsity = float(requested)
    if not 0.0 < sparsity < 1.0:
        raise ConversionError(f"sparsity must be between 0 and 1, not {sparsity}")
    return _prune(job, out, fixes, sparsity)


def _search_sparsity(job: Job, out: Path, fixes: list[str]) -> Path:
    tried: list[str] = []
    for sparsity in SPARSITY_LADDER:
        notes: list[str] = []
        _prune(job, out, notes, sparsity)
        failed = job.judge(out) if job.judge else []
        if not failed:
            fixes.extend(notes)
            fixes.append(f"sparsity {sparsity:.0%} chosen: the highest that keeps agreement on the calibration data"
                         + (f" ({', '.join(tried)} did not)" if tried else ""))  # fmt: skip
            return out
        tried.append(f"{sparsity:.0%}")
    fixes.extend(notes)
    fixes.append(f"no sparsity from {SPARSITY_LADDER[0]:.0%} down to {SPARSITY_LADDER[-1]:.0%} kept agreement")
    return out


def _consumers(model: ModelProto) -> dict[str, set[str]]:
    """Tensor name -> the op types that read it."""
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    return consumers


def _smallest_mask(w: np.ndarray, k: int) -> np.ndarray:
    """Mask of exactly the k smallest-magnitude weights (ties at the threshold cut to keep the count exact)."""
    import numpy as np

    threshold = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
    mask = np.abs(w) <= threshold
    if mask.sum() > k:
        flat = np.flatnonzero(mask.ravel())
        mask = np.zeros(w.size, bool)
        mask[flat[:k]] = True
        mask = mask.reshape(w.shape)
    return mask


def _prune(job: Job, out: Path, fixes: list[str], sparsity: float) -> Path:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(job.source))
    consumers = _consumers(model)
    pruned = total = 0
    for i, init in enumerate(model.graph.initializer):
        weight = init.data_type == 1 and len(init.dims) >= 2 and consumers.get(init.name, set()) & WEIGHTED_OPS
        if not weight:
            continue
        w = numpy_helper.to_array(init)
        k = int(w.size * sparsity)
        if k == 0:
            continue
        mask = _smallest_mask(w, k)
        w = np.where(mask, np.float32(0), w).astype(np.float32)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
        pruned += int(mask.sum())
        total += w.size
    if not total:
        raise ConversionError("pruned found no Conv/MatMul/Gemm weight initializers to prune")
    onnx.save(model, str(out))
    fixes.append(f"magnitude pruning: {pruned}/{total} weights zeroed ({pruned / total:.0%}, per tensor)")
    return out
