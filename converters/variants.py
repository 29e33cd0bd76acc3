"""The variant table: how each one is built from a float ONNX model. Heavy tools are imported inside builders."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converters import fixes as fx

if TYPE_CHECKING:
    from converters.calibration import Calibration

log = logging.getLogger("converters")


class ConversionError(RuntimeError):
    """A variant could not be built; the message is the operator-facing reason (naming the op when one is to blame)."""


@dataclass
class Job:
    """What every builder of one conversion run shares: the prepared float model, its data, scratch space."""

    source: Path  # the float ONNX model after the common fixes
    input_names: list[str]
    output_names: list[str]
    input_ranks: dict[str, int]
    calibration: Calibration
    batch: int
    work: Path
    options: dict[str, Any]
    ops: set[str]
    cache: dict[str, Any] = field(default_factory=dict)
    # failed metrics of a candidate ONNX model against the float original on the calibration data (ONNX Runtime);
    # lets a builder search its own knob (the pruned sparsity) without touching the validation data
    judge: Callable[[Path], list[str]] | None = None

    def samples(self, limit: int | None = None) -> list[dict]:
        return self.calibration.batches(self.batch, limit)


Builder = Callable[[Job, Path, list[str]], Path]


@dataclass(frozen=True)
class Variant:
    name: str
    format: str  # what the agent loads: onnx | openvino | tflite
    runtime: str  # where it is measured: onnxruntime | openvino | tflite
    suffix: str
    build: Builder
    needs: tuple[str, ...]  # importable modules
    packages: str  # what to pip install for them
    calibrated: bool
    summary: str


def _require(variant: Variant) -> None:
    missing = [m for m in variant.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ConversionError(
            f"{variant.name} needs {variant.packages} (missing module {', '.join(missing)}): "
            f"pip install 'edgefleet[convert]'"
        )


# --- ONNX Runtime variants -------------------------------------------------------------------------------------


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


class _Reader:
    """ONNX Runtime CalibrationDataReader over the calibration samples."""

    def __init__(self, samples: list[dict]) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only some calibrators call it
        pass


def build_int8_static(job: Job, out: Path, fixes: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src = _preprocessed(job, fixes, fx.MIN_QDQ_OPSET)
    samples = job.samples(limit=job.options.get("calibration_samples", 256))
    quantize_static(
        str(src),
        str(out),
        _Reader(samples),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=_reduce_range(fixes),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    fixes.append(f"calibrated on {len(samples)} sample(s) ({'synthetic' if job.calibration.synthetic else 'given'})")
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


def _is_weight(init, consumers: dict[str, set[str]]) -> bool:
    weighted = {"Conv", "MatMul", "Gemm", "ConvTranspose"}
    return init.data_type == 1 and len(init.dims) >= 2 and bool(consumers.get(init.name, set()) & weighted)


SPARSITY_LADDER = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


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
    tried = []
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


def _prune(job: Job, out: Path, fixes: list[str], sparsity: float) -> Path:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(job.source))
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    pruned = total = 0
    for i, init in enumerate(model.graph.initializer):
        if not _is_weight(init, consumers):
            continue
        w = numpy_helper.to_array(init)
        k = int(w.size * sparsity)
        if k == 0:
            continue
        threshold = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
        mask = np.abs(w) <= threshold
        if mask.sum() > k:  # ties at the threshold: keep the count exact
            flat = np.flatnonzero(mask.ravel())
            mask = np.zeros(w.size, bool)
            mask[flat[:k]] = True
            mask = mask.reshape(w.shape)
        w = np.where(mask, np.float32(0), w).astype(np.float32)
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
        pruned += int(mask.sum())
        total += w.size
    if not total:
        raise ConversionError("pruned found no Conv/MatMul/Gemm weight initializers to prune")
    onnx.save(model, str(out))
    fixes.append(f"magnitude pruning: {pruned}/{total} weights zeroed ({pruned / total:.0%}, per tensor)")
    return out


# --- OpenVINO variants -------------------------------------------------------------------------------------------


def _pack_ir(model, out: Path, work: Path, compress_to_fp16: bool) -> Path:
    import openvino as ov

    folder = work / f"ir-{out.stem}"
    folder.mkdir(exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=compress_to_fp16)
    with tarfile.open(out, "w") as tar:
        for name in ("model.xml", "model.bin"):
            info = tar.gettarinfo(str(folder / name), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(folder / name, "rb") as f:
                tar.addfile(info, f)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _ov_model(job: Job):
    import openvino as ov

    try:
        return ov.convert_model(str(job.source))
    except Exception as exc:
        raise ConversionError(fx.unsupported_op_message(exc, job.ops, "OpenVINO")) from exc


def build_openvino(job: Job, out: Path, fixes: list[str]) -> Path:
    fixes.append("IR weights stored as FP16 (OpenVINO's default; CPU computes in FP32)")
    return _pack_ir(_ov_model(job), out, job.work, compress_to_fp16=True)


def _looks_like_transformer(ops: set[str]) -> bool:
    """LayerNorm, or attention's Softmax + MatMul + Transpose (an MLP classifier's output Softmax is not enough)."""
    return "LayerNormalization" in ops or ({"Softmax", "MatMul", "Transpose"} <= ops and "Conv" not in ops)


def build_openvino_int8(job: Job, out: Path, fixes: list[str]) -> Path:
    import nncf

    model = _ov_model(job)
    samples = job.samples(limit=job.options.get("calibration_samples", 300))
    kwargs: dict[str, Any] = {}
    if _looks_like_transformer(job.ops):
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        fixes.append("NNCF model_type=TRANSFORMER (attention/LayerNorm found)")
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **kwargs)
    fixes.append(f"NNCF post-training quantization on {len(samples)} sample(s)")
    if job.calibration.synthetic:
        return _pack_ir(quantized, out, job.work, compress_to_fp16=False)
    score = _agreement_scorer(_ov_model(job), samples)
    plain = score(quantized)
    if plain < 1 - OV_MAX_DROP:  # real data says INT8 costs agreement: keep the costly layers in float
        try:
            controlled = _quantize_with_accuracy_control(_ov_model(job), samples, score, kwargs)
            kept = score(controlled)
        except Exception as exc:  # NNCF's own failure: the plain quantization stands
            fixes.append(f"NNCF accuracy control failed ({fx._first_line(exc)})")
        else:
            if kept > plain:
                quantized = controlled
                fixes.append(f"NNCF accuracy control: agreement on calibration data {plain:.3f} -> {kept:.3f}, "
                             "the layers that cost it stay in float")  # fmt: skip
            else:
                fixes.append(f"NNCF accuracy control did not help ({kept:.3f} vs {plain:.3f}); plain INT8 kept")
    return _pack_ir(quantized, out, job.work, compress_to_fp16=False)


OV_MAX_DROP = 0.005  # agreement (top-1, or cosine) the accuracy-controlled INT8 model may lose on calibration data


def _agreement_scorer(model, samples: list[dict]):
    """score(ov model or compiled model) -> its agreement with the float model on the calibration samples, as the
    report measures it (converters.core.agreement): top-1 where an output is classifier-like, else cosine."""
    import numpy as np
    import openvino as ov

    from converters.core import Thresholds, agreement  # core imports this module: import when called

    core = ov.Core()

    def outputs(compiled, data) -> list[dict]:
        return [{str(i): np.asarray(r[i]) for i in range(len(compiled.outputs))} for r in map(compiled, data)]

    by_sample = dict(zip(map(id, samples), outputs(core.compile_model(model, "CPU"), samples), strict=True))

    def score(candidate, data=None) -> float:
        data = samples if data is None else data  # NNCF may validate on a subset
        compiled = candidate if isinstance(candidate, ov.CompiledModel) else core.compile_model(candidate, "CPU")
        summary, _ = agreement([by_sample[id(s)] for s in data], outputs(compiled, data), Thresholds())
        return summary["top1"] if summary.get("top1") is not None else summary["cosine"]

    return score


def _quantize_with_accuracy_control(model, samples: list[dict], score, kwargs: dict[str, Any]):
    """NNCF's accuracy-controlled quantization, validated by agreement with the float model."""
    import nncf

    dataset = nncf.Dataset(samples)
    return nncf.quantize_with_accuracy_control(
        model, dataset, dataset, lambda compiled, data: score(compiled, data), max_drop=OV_MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(samples), **kwargs,
    )  # fmt: skip


# --- TFLite variants (onnx2tf + TensorFlow) ----------------------------------------------------------------------


def _onnx2tf(job: Job, integer: bool) -> dict[str, Path]:
    """Run onnx2tf once (with int8 calibration when any int8 variant is asked for) and reuse its outputs."""
    integer = integer or bool(job.options.get("tflite_int8_requested"))  # one onnx2tf run serves both variants
    cached = job.cache.get("onnx2tf")
    if cached is not None and (cached[0] or not integer):
        if isinstance(cached[1], Exception):
            raise cached[1]
        return cached[1]
    import numpy as np

    folder = job.work / "onnx2tf"
    kwargs: dict[str, Any] = {}
    if integer:
        calib = []
        for name in job.input_names:
            path = job.work / f"calib-{len(calib)}.npy"
            np.save(path, job.calibration.arrays[name][: job.options.get("calibration_samples", 100)])
            calib.append([name, str(path), 0.0, 1.0])  # mean 0, std 1: the data is used as it is
        kwargs |= {"output_integer_quantized_tflite": True, "custom_input_op_name_np_data_path": calib}
    if "Erf" in job.ops:  # TFLite has no builtin Erf (GELU): it would need the Flex delegate, which LiteRT lacks
        kwargs["replace_to_pseudo_operators"] = ["erf"]
    keep = [name for name, rank in job.input_ranks.items() if rank >= 3]
    layouts: list[tuple[dict[str, Any], str | None]] = [({}, None)]
    if keep:  # onnx2tf guesses channels-last layouts; keep the ONNX one, and if that trips, keep the shapes as they are
        layouts = [
            ({"keep_ncw_or_nchw_or_ncdhw_input_names": keep}, f"inputs {keep} kept in ONNX (channels-first) layout"),
            ({"keep_shape_absolutely_input_names": keep}, f"inputs {keep} kept in their ONNX shape, unchanged"),
        ]
    first_error: ConversionError | None = None
    for layout, note in layouts:
        try:
            _run_onnx2tf(job, folder, kwargs | layout)
        except ConversionError as exc:
            first_error = first_error or exc
            continue
        if note:  # after a failed layout, say why the next one was tried
            job.cache["onnx2tf_note"] = f"{note} ({str(first_error).split(':')[0]})" if first_error else note
        break
    else:
        job.cache["onnx2tf"] = (integer, first_error)
        raise first_error
    stem = job.source.stem
    kinds = ("float32", "integer_quant", "dynamic_range_quant")
    found = {kind: folder / f"{stem}_{kind}.tflite" for kind in kinds}
    found = {k: p for k, p in found.items() if p.exists()}
    error = ConversionError(f"onnx2tf produced no {stem}_float32.tflite") if "float32" not in found else None
    if flex := flex_ops(found.get("float32")):
        needs = ", ".join(flex)
        error = ConversionError(f"onnx2tf (TFLite) needs TensorFlow op(s) {needs} (Flex delegate); LiteRT lacks it")
    if error is not None:
        job.cache["onnx2tf"] = (integer, error)
        raise error
    job.cache["onnx2tf"] = (integer, found)
    return found


def flex_ops(path: Path | None) -> list[str]:
    """The TensorFlow ops a .tflite file calls through the Flex delegate (custom op codes named Flex<Op>)."""
    if path is None:
        return []
    return sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", path.read_bytes())})


def _run_onnx2tf(job: Job, folder: Path, kwargs: dict[str, Any]) -> None:
    """One onnx2tf conversion into a fresh `folder`; ConversionError names the op it failed at."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import onnx2tf

        onnx2tf.convert(
            input_onnx_file_path=str(job.source),
            output_folder_path=str(folder),
            non_verbose=True,
            copy_onnx_input_output_names_to_tflite=True,
            **kwargs,
        )
    except BaseException as exc:  # onnx2tf raises anything, even SystemExit, on an unsupported graph
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = str(exc)
        if isinstance(exc, ModuleNotFoundError) and "onnx2tf.ops." in text:  # its way of saying "no such op"
            op = text.rsplit("onnx2tf.ops.", 1)[1].strip("'\" ")
            raise ConversionError(f"onnx2tf (TFLite) does not support op {op}") from exc
        raise ConversionError(fx.unsupported_op_message(exc, job.ops, "onnx2tf (TFLite)")) from exc


def _onnx2tf_notes(job: Job) -> list[str]:
    notes = [job.cache["onnx2tf_note"]] if job.cache.get("onnx2tf_note") else []
    if "Erf" in job.ops:
        notes.append("Erf built from TFLite builtin ops (onnx2tf pseudo-Erf): no Flex delegate needed")
    return notes


def build_tflite(job: Job, out: Path, fixes: list[str]) -> Path:
    found = _onnx2tf(job, integer=False)
    fixes.extend(_onnx2tf_notes(job))
    shutil.copyfile(found["float32"], out)
    return out


def build_tflite_int8(job: Job, out: Path, fixes: list[str]) -> Path:
    """Full int8 when LiteRT runs it; else int8 weights with float activations (a transformer's pseudo-Erf divides
    by a value that int8 rounds to zero), named in the report."""
    found = _onnx2tf(job, integer=True)
    fixes.extend(_onnx2tf_notes(job))
    full = found.get("integer_quant")
    problem = _litert_problem(job, full) if full else "onnx2tf produced no integer-quantized model"
    if problem is None:
        fixes.append("int8 weights and activations, float32 inputs/outputs (onnx2tf integer_quant)")
        shutil.copyfile(full, out)
    elif "dynamic_range_quant" in found:
        fixes.append(f"int8 weights, float activations (onnx2tf dynamic_range_quant): full int8 {problem}")
        shutil.copyfile(found["dynamic_range_quant"], out)
    else:
        raise ConversionError(f"full int8 {problem}")
    return out


def _litert_problem(job: Job, path: Path) -> str | None:
    """Why LiteRT cannot run a .tflite file on one calibration batch, or None when it can."""
    from converters.runtimes import TfliteRunner

    try:
        runner = TfliteRunner(path, job.input_names, job.output_names)
        try:
            runner.run(job.samples(1)[0])
        finally:
            runner.close()
    except Exception as exc:
        return f"does not run on LiteRT: {fx._first_line(exc)}"
    return None


_ORT = ("onnxruntime",)
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("int8", "onnx", "onnxruntime", ".onnx", build_int8, _ORT, "onnxruntime", False,
                "dynamic INT8 (weights int8, activations quantized at run time)"),
        Variant("int8-static", "onnx", "onnxruntime", ".onnx", build_int8_static, _ORT, "onnxruntime", True,
                "static INT8, QDQ, per-channel, calibrated"),
        Variant("fp16", "onnx", "onnxruntime", ".onnx", build_fp16, ("onnxconverter_common",),
                "onnxconverter-common", False, "FP16 weights and compute, FP32 inputs/outputs"),
        Variant("int4", "onnx", "onnxruntime", ".onnx", build_int4, ("onnxruntime", "onnx_ir"),
                "onnxruntime and onnx-ir", False, "4-bit weight-only MatMul (MatMulNBits)"),
        Variant("pruned", "onnx", "onnxruntime", ".onnx", build_pruned, ("onnx",), "onnx", False,
                "magnitude-pruned weights (sparsity option), zstd transfer"),
        Variant("openvino", "openvino", "openvino", ".tar", build_openvino, ("openvino",), "openvino", False,
                "OpenVINO IR (tar of model.xml + model.bin)"),
        Variant("openvino-int8", "openvino", "openvino", ".tar", build_openvino_int8, ("openvino", "nncf"),
                "openvino and nncf", True, "OpenVINO IR, INT8 by NNCF post-training quantization"),
        Variant("tflite", "tflite", "tflite", ".tflite", build_tflite, ("onnx2tf", "tensorflow", "ai_edge_litert"),
                "onnx2tf, tensorflow, tf-keras, onnx-graphsurgeon, sng4onnx and ai-edge-litert", False,
                "TFLite float32 (onnx2tf)"),
        Variant("tflite-int8", "tflite", "tflite", ".tflite", build_tflite_int8,
                ("onnx2tf", "tensorflow", "ai_edge_litert"),
                "onnx2tf, tensorflow, tf-keras, onnx-graphsurgeon, sng4onnx and ai-edge-litert", True,
                "TFLite INT8 (onnx2tf integer quantization, calibrated)"),
    )
}  # fmt: skip


def check_available(name: str) -> Variant:
    """The variant by name, or ConversionError saying what is unknown or which package is missing."""
    if name not in VARIANTS:
        raise ConversionError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    _require(variant)
    return variant
