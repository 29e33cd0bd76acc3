"""A spare trial worker takes each runtime's one-time setup before its job (issue 29): the trial no longer pays it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json
from targets import footprint
from targets.trial_spare import preload
before = sorted(k for k, v in footprint._warm.items() if v is not None)
preload()
print(json.dumps([before, sorted(k for k, v in footprint._warm.items() if v is not None)]))
"""


def test_preload_warms_onnx_runtime_as_the_trial_would():
    probe = [sys.executable, "-c", PROBE]
    out = subprocess.run(probe, capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert "onnxruntime" not in before
    assert "onnxruntime" in after  # import_runtime finds it warm and the trial's meter starts at once
