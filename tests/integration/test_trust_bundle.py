"""Issue 26, finding 5: `install.sh --from` installed whatever wheels lay in the bundle (no hashes, no pinned
version, `--upgrade` took the highest version present) and `edgectl bundle --out` was never emptied, so a wheel
dropped beside the bundle was what ran as the service. A real bundle from `edgectl bundle`, the real installer."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from test_operator_bundle import ARCH, OFFLINE, PYTHON, edgectl, installer


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    if ARCH not in ("x86_64", "aarch64"):
        pytest.skip(f"no bundle platform for {ARCH}")
    out = tmp_path_factory.mktemp("trust") / "bundle"
    done = edgectl("bundle", "--platform", f"linux-{ARCH}", "--python", PYTHON, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def bundle(made, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(made, copy)
    return copy


def test_every_wheel_is_pinned_with_its_hash(made):
    pins = [line for line in (made / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(pins) == len(list(made.glob("*.whl"))) and all("==" in p and "--hash=sha256:" in p for p in pins)
    version = dict(line.split("=", 1) for line in (made / "bundle.env").read_text().splitlines())["VERSION"]
    assert any(p.startswith(f"edgefleet=={version} ") for p in pins)
    assert "systemd/install.sh" in (made / "SHA256SUMS").read_text()


def test_a_wheel_dropped_beside_the_bundle_is_refused_by_name(bundle, tmp_path):
    (own,) = bundle.glob("edgefleet-*.whl")
    shutil.copy(own, bundle / "edgefleet-9.9.9-py3-none-any.whl")  # the highest version present
    done = installer("--root", str(tmp_path / "root"), "--from", str(bundle), "--device-id", "cam-01", env=OFFLINE)
    print(done.stderr.strip())
    assert done.returncode == 1 and "edgefleet-9.9.9-py3-none-any.whl" in done.stderr and "not in" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "root/opt/edge-agent/venv").exists()  # refused before anything was installed


def test_an_altered_wheel_is_refused_by_name(bundle, tmp_path):
    (own,) = bundle.glob("edgefleet-*.whl")
    with zipfile.ZipFile(own, "a") as wheel:
        wheel.writestr("agent/backdoor.py", "import os\n")
    done = installer("--root", str(tmp_path / "root"), "--from", str(bundle), "--device-id", "cam-01", env=OFFLINE)
    print(done.stderr.strip())
    assert done.returncode == 1 and own.name in done.stderr and "sha256" in done.stderr
    assert not (tmp_path / "root/opt/edge-agent/venv").exists()


def test_bundle_refuses_a_directory_that_is_not_empty(tmp_path):
    out = tmp_path / "old-bundle"
    out.mkdir()
    (out / "edgefleet-9.9.9-py3-none-any.whl").write_bytes(b"left from before")
    done = edgectl("bundle", "--platform", f"linux-{ARCH}", "--python", PYTHON, "--out", str(out))
    assert done.returncode == 1 and "not empty" in done.stderr and len(done.stderr.strip().splitlines()) == 1
