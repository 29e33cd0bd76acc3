"""import_runtime warms OpenVINO's CPU plugin (targets/footprint.py): a first model's one-time setup is counted as no
model's footprint, so a fresh trial worker predicts what an agent already serving on OpenVINO adds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# In a fresh process: the MLP's load and run on OpenVINO, measured as the trial worker measures a candidate, with the
# runtime warmed (import_runtime) or only imported.
_LOAD = """
import importlib, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
import numpy as np
from edgectl import sample_models
from targets.backends.openvino import OpenVinoBackend, OpenVinoConfig
from targets.footprint import Meter, import_runtime
path = sample_models.mlp(Path({tmp!r}) / "mlp.onnx")
import_runtime("openvino") if {warm} else importlib.import_module("openvino")
meter = Meter()
meter.start()
backend = OpenVinoBackend(OpenVinoConfig())
backend.load(path, "onnx")
backend.infer({{s.name: np.ones([1, *s.shape[1:]], np.float32) for s in backend.inputs}})
print(json.dumps(meter.stop().rss_mb))
"""


def _added_mb(warm: bool, tmp: Path) -> float:
    code = _LOAD.format(root=str(ROOT), tmp=str(tmp), warm=warm)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
def test_openvino_setup_is_not_the_first_models(tmp_path):
    cold, warm = _added_mb(False, tmp_path), _added_mb(True, tmp_path)
    assert cold - warm > 10, (cold, warm)  # the plugin's setup (~30 MiB here) left out of the model's figure
    assert warm < 10, (cold, warm)  # the MLP itself is small
