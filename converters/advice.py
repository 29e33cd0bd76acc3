"""Which variants suit a model, before anything is built (`edgectl convert` without `--to`): static QDQ INT8 for conv
nets, dynamic INT8 (and 4-bit weights) for MatMul-heavy ones, OpenVINO where it is installed; every variant left out
with a one-line reason. After a build the report marks what was measured slower than FP32 (converters.core)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

CONV_OPS = frozenset({"Conv", "ConvTranspose"})
MATMUL_OPS = frozenset({"MatMul", "Gemm"})
INT4_MIN_WEIGHTS = 1_000_000  # MatMul weights below this: 4-bit packing saves too little to pay for its kernels


@dataclass(frozen=True)
class Shape:
    """Where a model's weights are: in convolutions or in matrix products."""

    conv_weights: int
    matmul_weights: int

    @property
    def conv_net(self) -> bool:
        return self.conv_weights >= self.matmul_weights and self.conv_weights > 0

    def describe(self) -> str:
        total = max(1, self.conv_weights + self.matmul_weights)
        return (
            f"{self.conv_weights / total:.0%} of its weights in Conv, {self.matmul_weights / total:.0%} in MatMul/Gemm"
        )


def weight_shape(model_path: Path) -> Shape:
    """Weights (initializer or Constant elements) feeding Conv and MatMul/Gemm nodes."""
    import math

    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:  # weights as Constant nodes (Paddle's exports) count alike
        values = [a.t for a in node.attribute if a.name == "value"] if node.op_type == "Constant" else []
        if values:
            sizes[node.output[0]] = math.prod(values[0].dims)
    conv = matmul = 0
    for node in model.graph.node:
        weights = sum(sizes.get(name, 0) for name in node.input[1:2])
        if node.op_type in CONV_OPS:
            conv += weights
        elif node.op_type in MATMUL_OPS:
            matmul += weights
    return Shape(conv, matmul)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def suggest(model_path: Path, calibrated: bool) -> tuple[list[str], dict[str, str]]:
    """(variants to build, {variant left out: why}) for the model; `calibrated`: real calibration data given."""
    shape = weight_shape(model_path)
    kind = f"a conv net ({shape.describe()})" if shape.conv_net else f"MatMul-heavy ({shape.describe()})"
    picked: list[str] = []
    skipped: dict[str, str] = {}
    if shape.conv_net:
        skipped["int8"] = (
            f"{kind}: dynamic INT8 quantizes activations at run time; ONNX Runtime runs such Conv slower than FP32 "
            "(0.09x measured on PaddleOCR's recognizer): int8-static instead"
        )
        if calibrated:
            picked.append("int8-static")
        else:
            skipped["int8-static"] = f"{kind}, but static INT8 calibrates activation ranges: give --calibration"
        skipped["int4"] = f"{kind}: 4-bit weights pack MatMul weights only"
    else:
        picked.append("int8")
        skipped["int8-static"] = (f"{kind}: per-run activation ranges (dynamic INT8) suit MatMul; ask for "
                                  "int8-static (--to) to compare")  # fmt: skip
        if shape.matmul_weights >= INT4_MIN_WEIGHTS and _installed("onnx_ir"):
            picked.append("int4")
        else:
            small = f"{shape.matmul_weights:,} MatMul weights: 4-bit packing saves too little"
            skipped["int4"] = small if _installed("onnx_ir") else "needs onnx-ir: pip install 'edgefleet[convert]'"
    if _installed("openvino"):
        picked.append("openvino")
        if not _installed("nncf"):
            skipped["openvino-int8"] = "needs nncf: pip install 'edgefleet[convert]'"
        elif calibrated:
            picked.append("openvino-int8")
        else:
            skipped["openvino-int8"] = "NNCF calibrates activation ranges: give --calibration"
    else:
        skipped["openvino"] = skipped["openvino-int8"] = "OpenVINO is not installed: pip install 'edgefleet[convert]'"
    skipped["fp16"] = "ONNX Runtime's CPU runs FP16 through casts (slower than FP32); ask for it (--to fp16) for GPUs"
    skipped["pruned"] = "zeroed weights only shrink the zstd transfer, not the time; ask for it (--to pruned)"
    skipped["tflite"] = skipped["tflite-int8"] = "for devices that run LiteRT; ask for it (--to tflite,tflite-int8)"
    return picked, skipped
