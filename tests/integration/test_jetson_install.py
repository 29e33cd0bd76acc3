"""systemd/install.sh on Jetsons (docs/jetson.md), against the probe's fixture trees: which extras and which of
NVIDIA's onnxruntime-gpu indexes each JetPack gets, and the CPU runtime where NVIDIA has no wheel for the agent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "probe"
JP6_0 = "https://pypi.jetson-ai-lab.io/jp6/cu122"
JP6_2 = "https://pypi.jetson-ai-lab.io/jp6/cu126"


def install(root: Path, **env: str) -> str:
    result = subprocess.run(
        ["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--no-pip"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if k not in ("EDGE_JETSON_INDEX", "PIP_EXTRA_INDEX_URL")}, **env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def fixture_root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


def release_line(root: Path, line: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "nv_tegra_release").write_text(line + "\n")


def test_jetson_orin_fixture_gets_gpu_from_the_jetpack_6_0_index(tmp_path):
    out = install(fixture_root(tmp_path, "jetson-orin"))  # R36 REVISION 3.0: JetPack 6.0, CUDA 12.2
    assert "extras for this hardware: gpu\n" in out
    assert f"(L4T R36.3): PIP_EXTRA_INDEX_URL={JP6_0}\n" in out
    assert "pip install 'edgefleet[gpu]'" in out


@pytest.mark.parametrize(
    ("line", "index"),
    [
        ("# R36 (release), REVISION: 2.0, GCID: 35084178, BOARD: generic, EABI: aarch64", JP6_0),
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", JP6_2),
        ("# R36 (release)", JP6_2),  # no revision: the current JetPack 6
    ],
)
def test_jetpack_6_releases_pick_their_cuda_index(tmp_path, line, index):
    root = fixture_root(tmp_path, "jetson-orin")
    release_line(root, line)
    out = install(root)
    assert "extras for this hardware: gpu\n" in out and f"PIP_EXTRA_INDEX_URL={index}\n" in out


JETPACK_5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64"
JETPACK_4 = "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64"


@pytest.mark.parametrize("line", [JETPACK_5, JETPACK_4])
def test_jetpack_4_and_5_get_the_cpu_runtime_and_say_why(tmp_path, line):
    root = fixture_root(tmp_path, "jetson-orin")
    release_line(root, line)
    out = install(root)
    assert "extras for this hardware: agent\n" in out and "PIP_EXTRA_INDEX_URL" not in out
    assert f"L4T R{line[3:5]}: no onnxruntime-gpu index known for the agent's Python" in out


def test_device_tree_only_jetson_is_recognised_and_an_index_can_be_given(tmp_path):
    root = fixture_root(tmp_path, "jetson-orin")
    (root / "etc" / "nv_tegra_release").unlink()
    out = install(root)
    assert "extras for this hardware: agent\n" in out and "Jetson without a readable /etc/nv_tegra_release" in out
    out = install(root, EDGE_JETSON_INDEX="https://mirror.example/jp6/cu126")
    assert "extras for this hardware: gpu\n" in out
    assert "PIP_EXTRA_INDEX_URL=https://mirror.example/jp6/cu126\n" in out


@pytest.mark.parametrize(("name", "extras"), [("rpi5", "agent,tflite"), ("rpi4-no-devicetree", "agent,tflite"),
                                              ("intel-nuc", "agent")])  # fmt: skip
def test_other_fixture_boards_get_no_jetson_index(tmp_path, name, extras):
    out = install(fixture_root(tmp_path, name))
    assert f"extras for this hardware: {extras}\n" in out and "PIP_EXTRA_INDEX_URL" not in out
