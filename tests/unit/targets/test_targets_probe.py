"""The hardware probe on fixture trees of a Jetson Orin, a Raspberry Pi 5 and an Intel NUC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from targets import probe as probe_module
from targets.probe import probe

FIXTURES = Path(__file__).parents[2] / "fixtures" / "probe"


def test_jetson_orin():
    result = probe(FIXTURES / "jetson-orin")
    assert result["arch"] == "aarch64"
    assert result["cpu_vendor"] == "arm"
    assert result["cpu_flags"] == ["asimd", "fphp", "neon"]
    assert result["memory_mb"] == 15624
    assert result["os"] == "Ubuntu 22.04.4 LTS"
    assert result["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert result["jetson"] == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.3.0"}
    assert result["raspberry_pi"] is None


def test_raspberry_pi_5():
    result = probe(FIXTURES / "rpi5")
    assert result["arch"] == "aarch64"
    assert result["cpu_model"] == "Cortex-A76" and result["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert "neon" in result["cpu_flags"] and "avx2" not in result["cpu_flags"]
    assert result["memory_mb"] == 8052
    assert result["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert result["raspberry_pi"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert result["jetson"] is None


def test_intel_nuc():
    result = probe(FIXTURES / "intel-nuc")
    assert result["arch"] == "x86_64"
    assert result["cpu_vendor"] == "intel"
    assert result["cpu_model"] == "Intel(R) Core(TM) Ultra 7 155H"
    assert result["cpu_flags"] == ["avx2", "avx_vnni"]
    assert result["board"] is None and result["jetson"] is None and result["raspberry_pi"] is None
    assert result["openvino_devices"] is None  # not deep: OpenVINO is not imported


def test_probe_is_json_safe_and_lists_runtimes_here():
    result = probe()
    json.dumps(result)
    assert set(probe_module.RUNTIMES) <= set(result["runtimes"])
    if result["runtimes"]["onnxruntime"]:
        assert "CPUExecutionProvider" in result["ort_providers"]
        assert result["nvidia_gpu"] == ("CUDAExecutionProvider" in result["ort_providers"])


def test_deep_probe_lists_openvino_devices():
    pytest.importorskip("openvino")
    result = probe(FIXTURES / "intel-nuc", deep=True)
    assert "CPU" in result["openvino_devices"]
    assert result["intel_npu"] == ("NPU" in result["openvino_devices"])


def test_nvidia_gpu_from_providers(monkeypatch):
    monkeypatch.setattr(probe_module, "ort_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert probe(FIXTURES / "jetson-orin")["nvidia_gpu"] is True
    monkeypatch.setattr(probe_module, "ort_providers", lambda: None)
    assert probe(FIXTURES / "jetson-orin")["nvidia_gpu"] is None


def test_ort_providers_read_from_the_installed_build_without_importing_it(tmp_path):
    import subprocess
    import sys

    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    for lib in ("libonnxruntime_providers_cuda.so", "libonnxruntime_providers_tensorrt.so", "onnxruntime_pybind11.so"):
        (capi / lib).touch()
    assert probe_module.ort_providers(tmp_path / "onnxruntime") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider",
    ]  # fmt: skip
    code = "import sys; from targets.probe import probe; probe(); print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_raspberry_pi_without_device_tree_and_cpu_model_apart_from_board():
    """A container or a kernel without /proc/device-tree: the board comes from cpuinfo's Model line, and the CPU is
    the core (Cortex-A72), not the board line."""
    result = probe(FIXTURES / "rpi4-no-devicetree")
    assert result["board"] == result["raspberry_pi"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert result["cpu_model"] == "Cortex-A72"
    assert result["os"] == "Debian GNU/Linux 11 (bullseye)"
    assert probe(FIXTURES / "rpi5")["cpu_model"] == "Cortex-A76"
    assert probe(FIXTURES / "jetson-orin")["cpu_model"] == "Cortex-A78AE"
