"""`edgectl bundle`'s first step, building the edgefleet wheel, in a venv made as the README's first command makes it
(`python3 -m venv`: setuptools without bdist_wheel on Python 3.11, none from 3.12), not only in the `[all]` venv whose
`wheel` package hid the failure; and a pip failure said in one line with pip's real reason."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from edgectl.commands.bundle import CAN_BUILD_HERE, build_wheel, build_wheel_from, pip_cause, project_root, source_copy
from edgectl.errors import CommandFailed


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> str:
    """The Python of a venv as `python3 -m venv .venv` leaves it (what `pip install -e` adds does not build wheels)."""
    venv = tmp_path_factory.mktemp("fresh") / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", CAN_BUILD_HERE]).returncode == 1  # the case the bundle must handle
    return python


def test_the_wheel_builds_from_a_fresh_venv(fresh_python, tmp_path):
    wheel = build_wheel(tmp_path / "out", python=fresh_python)
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
    assert wheel.name.startswith("edgefleet-") and "agent/cli.py" in names and "targets/trial_worker.py" in names
    assert "controller/static/swagger/swagger-ui-bundle.js" in names  # /docs works from an installed wheel too


def test_a_failed_build_names_pip_s_real_reason_in_one_line(fresh_python, tmp_path):
    root = project_root()
    assert root is not None
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(CommandFailed) as failed:
        build_wheel_from(source_copy(root, Path(tmp)), tmp_path / "out", fresh_python, isolated=False)
    message = str(failed.value)
    assert "\n" not in message and "See above" not in message, message
    has_setuptools = subprocess.run([fresh_python, "-c", "import setuptools"]).returncode == 0
    assert ("invalid command 'bdist_wheel'" if has_setuptools else "setuptools") in message, message
    assert message.startswith("building the edgefleet wheel failed: ")


def test_pip_cause_skips_pip_s_labels_and_summaries():
    output = """  error: subprocess-exited-with-error
  × Preparing metadata (pyproject.toml) did not run successfully.
      running dist_info
      error: invalid command 'bdist_wheel'
      [end of output]
  note: This error originates from a subprocess, and is likely not a problem with pip.
error: metadata-generation-failed
hint: See above for details."""
    assert pip_cause(output) == "invalid command 'bdist_wheel'"
    no_match = "ERROR: Could not find a version that satisfies x\nERROR: No matching distribution found for x"
    assert pip_cause(no_match) == "No matching distribution found for x"
