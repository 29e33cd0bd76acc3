"""`edgectl bundle` + `systemd/install.sh --from`: the agent's wheelhouse fetched for this host's platform with pip's
real platform download, then installed by the installer into a fresh venv with no index at all (pip --no-index,
no pip configuration): the offline path of a device."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
ARCH = platform.machine()
OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}  # no index, no configured wheel dirs: only the bundle


def edgectl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, timeout=900)


def installer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "EDGE_PYTHON": shutil.which("python3") or sys.executable, **(env or {})}
    return subprocess.run(["bash", str(ROOT / "systemd/install.sh"), *args], capture_output=True, text=True,
                          timeout=900, env=full)  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    if ARCH not in ("x86_64", "aarch64"):
        pytest.skip(f"no bundle platform for {ARCH}")
    out = tmp_path_factory.mktemp("bundle") / "agent-bundle"
    done = edgectl("bundle", "--platform", f"linux-{ARCH}", "--python", PYTHON, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"for linux-{ARCH}, Python {PYTHON}" in done.stdout
    return out


@pytest.mark.slow
def test_bundle_holds_the_agent_its_runtimes_and_the_installer(bundle):
    wheels = {p.name.split("-")[0].lower() for p in bundle.glob("*.whl")}
    assert {"edgefleet", "onnxruntime", "numpy", "paho_mqtt", "pydantic", "psutil", "zstandard"} <= wheels
    (own,) = bundle.glob("edgefleet-*.whl")
    with zipfile.ZipFile(own) as wheel:  # built from a copy of the packages: the agent, never tests or caches
        names = wheel.namelist()
    assert "agent/cli.py" in names and "systemd/install.sh" not in names
    assert not any(n.startswith(("tests/", "bench/")) or "__pycache__" in n for n in names)
    manifest = dict(line.split("=", 1) for line in (bundle / "bundle.env").read_text().splitlines())
    assert manifest["ARCH"] == ARCH and manifest["PYTHON"] == PYTHON and manifest["EXTRAS"] == "agent"
    assert (bundle / "systemd" / "install.sh").is_file() and (bundle / "systemd" / "edge-agent.service").is_file()


@pytest.mark.slow
def test_install_from_the_bundle_works_with_no_index(bundle, tmp_path):
    root = tmp_path / "root"
    done = installer("--root", str(root), "--from", str(bundle), "--device-id", "cam-01", env=OFFLINE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installing from the bundle" in done.stdout and "(no network)" in done.stdout
    venv = root / "opt/edge-agent/venv/bin"
    version = subprocess.run([venv / "edge-agent", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("edge-agent "), version.stderr
    probe = "import agent, onnxruntime, numpy; print(agent.__file__)"
    where = subprocess.run([venv / "python", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0 and str(root) in where.stdout, where.stderr  # the venv's copy, not this checkout
    assert 'device_id = "cam-01"' in (root / "etc/edge-agent/agent.toml").read_text()


def test_install_from_a_bundle_for_another_python_is_one_line(tmp_path):
    fake = tmp_path / "bundle"
    fake.mkdir()
    (fake / "bundle.env").write_text(f"PACKAGE=edgefleet\nEXTRAS=agent\nARCH={ARCH}\nPYTHON=3.99\n")
    done = installer("--root", str(tmp_path / "root"), "--from", str(fake), env=OFFLINE)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "the bundle is for Python 3.99" in done.stderr and "edgectl bundle --python" in done.stderr
    assert not (tmp_path / "root").exists()  # checked before anything was written


def test_install_from_a_directory_that_is_no_bundle_is_one_line(tmp_path):
    done = installer("--root", str(tmp_path / "root"), "--from", str(tmp_path))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no bundle.env" in done.stderr, done.stderr


def test_bundle_for_an_unknown_platform_or_python_is_one_line(tmp_path):
    bad = edgectl("bundle", "--platform", "windows-x86", "--out", str(tmp_path / "b"))
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --platform 'windows-x86': expected one of linux-aarch64, linux-x86_64"
    ]
    old = edgectl("bundle", "--python", "2.7", "--out", str(tmp_path / "b"))
    assert old.returncode == 1 and "--python '2.7'" in old.stderr and old.stderr.count("\n") == 1
