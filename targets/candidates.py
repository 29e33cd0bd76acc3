"""The ways one model can run here (backend, device, precision), in the order rules expect them to be fastest, and the
trusted reference among them: the format's own runtime at full precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from targets import registry

# The format's own runtime at full precision: every other way of running a model is compared with it.
REFERENCE = {"onnx": "onnxruntime:cpu", "tflite": "litert", "openvino": "openvino:cpu"}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: a registered backend with the options that pin its device/provider/precision."""

    name: str  # e.g. "onnxruntime:tensorrt", "openvino:cpu", "openvino:cpu:bf16", "litert"
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    precision: str = "full"  # "full" = the model's own types; "bf16"/"fp16" compete only if they agree


def candidates(model_format: str, hardware: dict[str, Any], cache_dir: Path | None = None) -> list[Candidate]:
    """Installed candidates that read `model_format`, in rule order for this hardware; reduced-precision ones last."""
    installed = set(registry.installed_backends(model_format))
    found: dict[str, list[Candidate]] = {"onnxruntime": [], "openvino": [], "litert": []}
    reduced: list[Candidate] = []
    if "onnxruntime" in installed:
        found["onnxruntime"], trt_fp16 = _onnxruntime(hardware, cache_dir)
        reduced += trt_fp16
    if "openvino" in installed:
        found["openvino"], ov_reduced = _openvino(hardware)
        reduced += ov_reduced
    if "litert" in installed:
        found["litert"].append(Candidate("litert", "litert", {}))
    for key in installed - found.keys():  # backends added later run after the known ones, with default options
        found[key] = [Candidate(key, key, {})]
    order = _rule_order(model_format, hardware) + [k for k in found if k not in _rule_order(model_format, hardware)]
    return [c for key in order for c in found.get(key, [])] + reduced


def reference(model_format: str, cands: list[Candidate]) -> tuple[Candidate | None, str]:
    """The trusted reference among `cands`, and a note when the format's own runtime is not installed here."""
    own = REFERENCE.get(model_format)
    match = next((c for c in cands if c.name == own), None)
    if match is not None:
        return match, ""
    exact = next((c for c in cands if c.precision == "full"), None)
    if exact is None:
        return None, f"no full-precision runtime reads {model_format!r} models here"
    return exact, f"{own} (the format's own runtime) is not installed; {exact.name} is the reference"


def _onnxruntime(hardware: dict[str, Any], cache_dir: Path | None) -> tuple[list[Candidate], list[Candidate]]:
    providers = hardware.get("ort_providers") or ["CPUExecutionProvider"]
    exact: list[Candidate] = []
    reduced: list[Candidate] = []
    if "TensorrtExecutionProvider" in providers:
        trt: dict[str, Any] = {"providers": ["TensorrtExecutionProvider"], "fallback": False}
        if cache_dir is not None:
            trt["tensorrt_cache_dir"] = str(cache_dir / "tensorrt")
        exact.append(Candidate("onnxruntime:tensorrt", "onnxruntime", trt))
        fp16 = {**trt, "tensorrt_fp16": True}
        reduced.append(Candidate("onnxruntime:tensorrt:fp16", "onnxruntime", fp16, "fp16"))
    if "CUDAExecutionProvider" in providers:
        exact.append(
            Candidate("onnxruntime:cuda", "onnxruntime", {"providers": ["CUDAExecutionProvider"], "fallback": False})
        )
    exact.append(Candidate("onnxruntime:cpu", "onnxruntime", {"providers": ["CPUExecutionProvider"]}))
    return exact, reduced


def _openvino(hardware: dict[str, Any]) -> tuple[list[Candidate], list[Candidate]]:
    devices = hardware.get("openvino_devices") or ["CPU"]
    exact: list[Candidate] = []
    reduced: list[Candidate] = []
    for device in ("GPU", "NPU", "CPU"):
        if not any(d.split(".")[0] == device for d in devices):
            continue
        key = device.lower()
        if device == "NPU":  # computes in fp16 whatever it is told: a reduced-precision candidate only
            reduced.append(Candidate(f"openvino:{key}", "openvino", {"device": device}, "fp16"))
            continue
        exact.append(Candidate(f"openvino:{key}", "openvino", {"device": device}))
        if device == "GPU":
            reduced.append(
                Candidate(f"openvino:{key}:fp16", "openvino", {"device": device, "precision": "f16"}, "fp16")
            )
        elif any(flag in (hardware.get("cpu_flags") or []) for flag in _BF16_FLAGS):
            reduced.append(
                Candidate(f"openvino:{key}:bf16", "openvino", {"device": device, "precision": "bf16"}, "bf16")
            )
    return exact, reduced


def _rule_order(model_format: str, hardware: dict[str, Any]) -> list[str]:
    arm = str(hardware.get("arch", "")).startswith(("aarch64", "arm"))
    if hardware.get("jetson") or hardware.get("nvidia_gpu"):
        return ["onnxruntime", "litert" if model_format == "tflite" else "openvino"]
    if arm:
        return ["litert", "openvino"] if model_format == "tflite" else ["onnxruntime", "openvino"]
    if hardware.get("cpu_vendor") == "intel":
        return ["openvino", "onnxruntime", "litert"]
    return ["onnxruntime", "openvino", "litert"] if model_format != "tflite" else ["litert", "openvino"]
