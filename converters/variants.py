"""The variant registry: what each optimized variant is (target format, toolchain, where it is measured, what it
needs installed) and which builder makes it. Heavy tools are imported inside the builders."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from converters.builders import onnxruntime as ort
from converters.builders import openvino as ov
from converters.builders import tflite as tfl
from converters.evidence import Thresholds
from converters.job import Builder, ConversionError

TFLITE_MODULES = ("onnx2tf", "tensorflow", "ai_edge_litert")
TFLITE_PACKAGES = "onnx2tf, tensorflow, tf-keras, onnx-graphsurgeon, sng4onnx and ai-edge-litert"


@dataclass(frozen=True)
class Variant:
    name: str
    format: str  # what the agent loads: onnx | openvino | tflite
    toolchain: str  # what builds it: onnxruntime | openvino | onnx2tf (one module in converters/builders)
    runtime: str  # where it is measured: onnxruntime | openvino | tflite
    suffix: str
    build: Builder
    needs: tuple[str, ...]  # importable modules
    packages: str  # what to pip install for them
    calibrated: bool
    summary: str
    thresholds: Thresholds | None = None  # its own agreement thresholds; None: the run's

    @property
    def extra(self) -> str:
        """The edgefleet extra that installs what it needs (TensorFlow's toolchain has one of its own)."""
        return "convert-tflite" if self.toolchain == "onnx2tf" else "convert"

    def require(self) -> None:
        """ConversionError naming what to install when a module the builder needs is missing."""
        missing = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if missing:
            raise ConversionError(
                f"{self.name} needs {self.packages} (missing module {', '.join(missing)}): "
                f"pip install 'edgefleet[{self.extra}]'"
            )


# toolchain -> (format, runtime, suffix) of what it builds
TOOLCHAINS = {
    "onnxruntime": ("onnx", "onnxruntime", ".onnx"),
    "openvino": ("openvino", "openvino", ".tar"),
    "onnx2tf": ("tflite", "tflite", ".tflite"),
}


def _variant(
    name: str, toolchain: str, build: Builder, needs: tuple[str, ...], packages: str, calibrated: bool, summary: str
) -> Variant:
    model_format, runtime, suffix = TOOLCHAINS[toolchain]
    return Variant(name, model_format, toolchain, runtime, suffix, build, needs, packages, calibrated, summary)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _variant("int8", "onnxruntime", ort.build_int8, ("onnxruntime",), "onnxruntime", False,
                 "dynamic INT8 (weights int8, activations quantized at run time)"),
        _variant("int8-static", "onnxruntime", ort.build_int8_static, ("onnxruntime",), "onnxruntime", True,
                 "static INT8, QDQ, per-channel, calibrated"),
        _variant("fp16", "onnxruntime", ort.build_fp16, ("onnxconverter_common",), "onnxconverter-common", False,
                 "FP16 weights and compute, FP32 inputs/outputs"),
        _variant("int4", "onnxruntime", ort.build_int4, ("onnxruntime", "onnx_ir"), "onnxruntime and onnx-ir", False,
                 "4-bit weight-only MatMul (MatMulNBits)"),
        _variant("pruned", "onnxruntime", ort.build_pruned, ("onnx",), "onnx", False,
                 "magnitude-pruned weights (sparsity option), zstd transfer"),
        _variant("openvino", "openvino", ov.build_openvino, ("openvino",), "openvino", False,
                 "OpenVINO IR (tar of model.xml + model.bin)"),
        _variant("openvino-int8", "openvino", ov.build_openvino_int8, ("openvino", "nncf"), "openvino and nncf", True,
                 "OpenVINO IR, INT8 by NNCF post-training quantization"),
        _variant("tflite", "onnx2tf", tfl.build_tflite, TFLITE_MODULES, TFLITE_PACKAGES, False,
                 "TFLite float32 (onnx2tf)"),
        _variant("tflite-int8", "onnx2tf", tfl.build_tflite_int8, TFLITE_MODULES, TFLITE_PACKAGES, True,
                 "TFLite INT8 (onnx2tf integer quantization, calibrated)"),
    )
}  # fmt: skip


def check_available(name: str) -> Variant:
    """The variant by name, or ConversionError saying what is unknown or which package is missing."""
    if name not in VARIANTS:
        raise ConversionError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    variant.require()
    return variant


def parse_variants(text: str) -> list[str]:
    """'int8,fp16' or 'all' -> variant names (unknown names are kept: they become results with an error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(VARIANTS)
    return list(dict.fromkeys(names))
