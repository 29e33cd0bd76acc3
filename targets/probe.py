"""Hardware probe: what this device is and which runtimes it can import, read from injectable /proc, /sys, /etc roots
so tests can point it at fixture trees of other boards."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import Any

# runtime name -> (import module, distribution names that may provide it)
RUNTIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")),
    "openvino": ("openvino", ("openvino",)),
    "litert": ("ai_edge_litert", ("ai-edge-litert",)),
    "tflite_runtime": ("tflite_runtime", ("tflite-runtime",)),
}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# CPU flags the selection rules care about, as /proc/cpuinfo spells them (x86 "flags", ARM "Features")
INTERESTING_FLAGS = (
    "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_tile", "amx_int8",
    "neon", "asimd", "fphp",
)  # fmt: skip


def _cpuinfo_fields(root: Path) -> dict[str, str]:
    """First value of each key in /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in _read(root / "proc/cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def cpu_flags(root: Path) -> list[str]:
    """The interesting subset of the CPU's feature flags (ARMv8 `asimd` is reported as `neon` too)."""
    fields = _cpuinfo_fields(root)
    flags = set((fields.get("flags", "") + " " + fields.get("Features", "")).split())
    if "asimd" in flags:
        flags.add("neon")
    return sorted(f for f in INTERESTING_FLAGS if f in flags)


def cpu_vendor(root: Path) -> str:
    fields = _cpuinfo_fields(root)
    vendor = fields.get("vendor_id", "")
    if vendor == "GenuineIntel":
        return "intel"
    if vendor == "AuthenticAMD":
        return "amd"
    if "CPU implementer" in fields or "Features" in fields:
        return "arm"
    return vendor.lower() or "unknown"


def arch(root: Path) -> str:
    """The machine's architecture: live for the real root, inferred from cpuinfo for a fixture tree."""
    if root.resolve() == Path("/"):
        return platform.machine()
    fields = _cpuinfo_fields(root)
    if "flags" in fields:
        return "x86_64"
    if "Features" in fields or "CPU implementer" in fields:
        return "aarch64"
    return platform.machine()


def board_model(root: Path) -> str | None:
    """The board: the device-tree model (Arm boards: Jetson, Raspberry Pi), else cpuinfo's "Model" line (Raspberry Pi
    kernels and containers without /proc/device-tree), else the firmware's DMI product (x86 boxes), else None."""
    text = _read(root / "proc/device-tree/model").strip("\x00 \n")
    if text:
        return text
    model = _cpuinfo_fields(root).get("Model", "")
    if model:
        return model
    vendor = _read(root / "sys/class/dmi/id/sys_vendor").strip()
    product = _read(root / "sys/class/dmi/id/product_name").strip()
    if product and product.lower() not in ("to be filled by o.e.m.", "system product name", "default string"):
        return f"{vendor} {product}".strip()
    return None


def jetson(root: Path) -> dict[str, str] | None:
    """Jetson model and L4T release from /etc/nv_tegra_release (e.g. "# R36 (release), REVISION: 3.0, ...")."""
    release = _read(root / "etc/nv_tegra_release")
    model = board_model(root) or ""
    if not release and "jetson" not in model.lower() and "nvidia" not in model.lower():
        return None
    l4t = None
    first = release.splitlines()[0] if release else ""
    if first.startswith("# R"):
        major = first[3:].split()[0]
        revision = first.partition("REVISION:")[2].split(",")[0].strip()
        l4t = f"{major}.{revision}" if revision else major
    return {"model": model or "unknown Jetson", "l4t": l4t or "unknown"}


def raspberry_pi(root: Path) -> str | None:
    model = board_model(root) or ""
    return model if model.startswith("Raspberry Pi") else None


# Execution providers ONNX Runtime can offer, in its own priority order, by the library each build ships
_ORT_PROVIDER_LIBS = (
    ("TensorrtExecutionProvider", "libonnxruntime_providers_tensorrt"),
    ("CUDAExecutionProvider", "libonnxruntime_providers_cuda"),
    ("ROCMExecutionProvider", "libonnxruntime_providers_rocm"),
    ("OpenVINOExecutionProvider", "libonnxruntime_providers_openvino"),
)


def ort_providers(package_dir: Path | None = None) -> list[str] | None:
    """ONNX Runtime's execution providers, or None where it is not installed. Read from the provider libraries the
    installed build ships, not by importing it: the probe runs in every agent and importing onnxruntime costs ~15 MB."""
    if package_dir is None:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or not spec.submodule_search_locations:
            return None
        package_dir = Path(next(iter(spec.submodule_search_locations)))
    try:
        names = os.listdir(package_dir / "capi")
    except OSError:
        return []
    found = [provider for provider, lib in _ORT_PROVIDER_LIBS if any(n.startswith(lib) for n in names)]
    return [*found, "CPUExecutionProvider"]


def openvino_devices() -> list[str] | None:
    """OpenVINO's devices (CPU, GPU, NPU...), or None where it is not installed. Importing it costs memory."""
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        import openvino

        return list(openvino.Core().available_devices)
    except Exception:  # noqa: BLE001
        return []


# Arm's "CPU implementer" / "CPU part" codes of the cores edge boards carry (Linux's arch/arm64 cputype.h)
_ARM_CORES = {
    (0x41, 0xD03): "Cortex-A53", (0x41, 0xD04): "Cortex-A35", (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD08): "Cortex-A72", (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75", (0x41, 0xD0B): "Cortex-A76", (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77", (0x41, 0xD40): "Neoverse-V1", (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD44): "Cortex-X1", (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710", (0x41, 0xD4F): "Neoverse-V2", (0x4E, 0x004): "NVIDIA Carmel",
}  # fmt: skip


def cpu_model(root: Path) -> str:
    """The CPU core model, never the board: x86's "model name", an Arm core named from its implementer and part
    codes (Raspberry Pi kernels put the board in cpuinfo's "Model" line: that is `board`, not the CPU)."""
    fields = _cpuinfo_fields(root)
    try:  # Arm: a kernel's "model name" there is a generic "ARMv8 Processor rev 1 (v8l)"
        core = (int(fields["CPU implementer"], 16), int(fields["CPU part"], 16))
        if core in _ARM_CORES:
            return _ARM_CORES[core]
    except (KeyError, ValueError):
        core = None
    for key in ("model name", "cpu model", "uarch"):
        if fields.get(key):
            return fields[key]
    if core is not None:
        return f"Arm core implementer {core[0]:#x} part {core[1]:#x}"
    return platform.processor() or "unknown"


def memory_mb(root: Path) -> int:
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def os_name(root: Path) -> str:
    for line in _read(root / "etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def runtime_versions() -> dict[str, str | None]:
    """Each runtime's installed version, or None; found without importing the (heavy) runtime."""
    found: dict[str, str | None] = {}
    for name, (module, dists) in RUNTIMES.items():
        version = None
        if importlib.util.find_spec(module) is not None:
            for dist in dists:
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
            version = version or "unknown"
        found[name] = version
    return found


def probe(root: Path = Path("/"), deep: bool = False) -> dict[str, Any]:
    """A JSON-safe description of this device, part of its presence message. `deep` also imports OpenVINO to list
    its devices (Intel GPU/NPU); ONNX Runtime's providers are listed whenever it is installed."""
    providers = ort_providers()
    devices = openvino_devices() if deep else None
    return {
        "arch": arch(root),
        "cpu_model": cpu_model(root),
        "cpu_vendor": cpu_vendor(root),
        "cpu_flags": cpu_flags(root),
        "cores": os.cpu_count() or 1,
        "memory_mb": memory_mb(root),
        "os": os_name(root),
        "python": platform.python_version(),
        "board": board_model(root),
        "jetson": jetson(root),
        "raspberry_pi": raspberry_pi(root),
        "ort_providers": providers,
        "nvidia_gpu": None if providers is None else "CUDAExecutionProvider" in providers,
        "openvino_devices": devices,
        "intel_gpu": None if devices is None else any(d.startswith("GPU") for d in devices),
        "intel_npu": None if devices is None else "NPU" in devices,
        "runtimes": runtime_versions(),
    }
