"""Repairs that real ONNX files need before the quantizers and converters accept them; each one says what it did."""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto

log = logging.getLogger("converters")

MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute) needs opset 13


def default_opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def op_types(model: ModelProto) -> set[str]:
    """Every op type in the graph and its subgraphs, with a domain prefix for non-default domains."""
    found: set[str] = set()

    def walk(graph: GraphProto) -> None:
        for node in graph.node:
            found.add(f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def constants_to_initializers(model: ModelProto, fixes: list[str]) -> None:
    """Move top-level Constant nodes holding tensors into initializers, where quantizers look for weights."""
    from onnx import numpy_helper

    moved = 0
    keep = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in attrs:
            tensor = numpy_helper.to_array(attrs["value"].t)
            model.graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        fixes.append(f"constant folding: moved {moved} Constant node(s) into initializers")


def unique_node_names(model: ModelProto) -> int:
    """Give every node of the main graph a unique name (ONNX Runtime refuses duplicates); returns how many changed."""
    seen: set[str] = set()
    changed = 0
    for i, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        changed += bool(node.name)
        node.name = name
        seen.add(name)
    return changed


def upgrade_opset(model: ModelProto, minimum: int, fixes: list[str]) -> ModelProto:
    """The model converted to `minimum` opset when it is older (onnx.version_converter)."""
    import onnx
    from onnx import version_converter

    current = default_opset(model)
    if current >= minimum:
        return model
    try:
        upgraded = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise RuntimeError(f"opset {current} model could not be upgraded to opset {minimum}: {exc}") from exc
    fixes.append(f"opset upgrade {current} -> {minimum} (per-channel quantization needs {MIN_QDQ_OPSET}+)")
    return upgraded


def ort_preprocess(src: Path, dst: Path, fixes: list[str]) -> Path:
    """ONNX Runtime's quantization pre-processing (symbolic shape inference, graph optimization, ONNX shape
    inference), falling back step by step when one of them trips on the model (unusual Concat axes, custom ops)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from converters.scratch import keep_ort_out_of_cwd

    keep_ort_out_of_cwd()  # its symbolic shape inference leaves a partial model in the current directory on failure
    attempts = [
        ({}, "ORT pre-processing (symbolic shape inference, graph optimization, shape inference)"),
        ({"skip_symbolic_shape": True}, "ORT pre-processing without symbolic shape inference (it failed: {err})"),
        (
            {"skip_symbolic_shape": True, "skip_optimization": True},
            "ORT pre-processing: ONNX shape inference only (optimization failed: {err})",
        ),
    ]
    error = ""
    for kwargs, note in attempts:
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
        except Exception as exc:  # the pre-processor raises whatever its passes raise
            error = preprocess_problem(exc)
            log.info("pre-processing %s failed: %s", kwargs, error)
            continue
        fixes.append(note.format(err=error))
        return dst
    fixes.append(f"ORT pre-processing skipped (every pass failed: {error})")
    return src


def samples_text(count: int) -> str:
    """`1 sample`, `8 samples`: rows of calibration data, counted as `edgectl models` counts a version's samples."""
    return f"{count} sample{'' if count == 1 else 's'}"


def preprocess_problem(exc: BaseException) -> str:
    """Why a pre-processing pass failed, in an operator's terms: what to install, never the arguments of ONNX
    Runtime's functions it suggests to its own callers (`pass skip_symbolic_shape=True to quant_pre_process()`)."""
    if isinstance(exc, ImportError) and "sympy" in str(exc):
        return "it needs sympy, not installed here: pip install sympy"
    return _CALLER_ADVICE.sub("", first_line(exc)).strip()


_CALLER_ADVICE = re.compile(r"\s*(?:,\s*)?\bor pass \w+=\S+ to [\w.]+\(\)")


def has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (int8 dot products without the U8S8 saturation of AVX2's VPMADDUBSW)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags))


def needs_reduce_range() -> bool:
    """7-bit weights on x86 without VNNI, where ONNX Runtime's U8S8 kernels can saturate; never elsewhere."""
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") and not has_vnni()


_TELLING = re.compile(r"no conversion rule|not supported|not yet implemented|unsupported", re.I)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip(" -") for line in text.splitlines() if line.strip(" -")]
    telling = [line for line in lines if _TELLING.search(line)]
    return ((telling or lines or [text])[0])[:300]


UNPARSEABLE = "it does not parse as an ONNX protobuf (cut short in transfer, or not an .onnx file)"


def load_problem(exc: BaseException) -> str:
    """Why onnx could not load or check a model, in the operator's terms: a file that is no ONNX protobuf at all
    (protobuf's "Error parsing message with type 'onnx.ModelProto'") is said to be cut short or not ONNX."""
    line = first_line(exc)
    return UNPARSEABLE if "Error parsing message" in line or "Unable to parse proto" in line else line


def unsupported_op_message(exc: BaseException, model_ops: set[str], tool: str) -> str:
    """`tool` failed: name the model's op types that its error mentions (usually the unsupported one)."""
    text = str(exc)
    # an op that appears in the message as "...Scaler-1" or "op type Scaler" is the likely culprit
    named = sorted(
        op for op in model_ops if re.search(rf"(?<![A-Za-z]){re.escape(op.split('.')[-1])}(?![A-Za-z0-9])", text)
    )
    if named and _TELLING.search(text):
        return f"{tool} does not support op {', '.join(named)}: {first_line(exc)}"
    if named:  # it choked on a supported op (a shape or layout it could not follow)
        return f"{tool} failed at op {', '.join(named)}: {first_line(exc)}"
    return f"{tool} failed: {first_line(exc)}"
