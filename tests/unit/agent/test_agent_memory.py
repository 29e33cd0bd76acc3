"""The idle agent's memory (issue 29, item 5): no runtime, no numpy and no grpcio until something needs them; numpy
alone is ~16 MiB resident here, ONNX Runtime ~20 MiB more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("numpy", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "grpc", "google.protobuf")


def test_the_agents_modules_import_no_runtime_no_numpy_no_grpc():
    code = (
        "import sys, agent.cli, agent.service, agent.doctor\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, f'imported by an idle agent: {heavy}'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_request_path_still_works_once_numpy_is_imported_lazily():
    """The reservoir and the shadow mirror copy inputs without importing numpy themselves."""
    import numpy as np

    from agent.serving.live import Mirror
    from agent.serving.reservoir import Reservoir

    reservoir, mirror = Reservoir(4, 1 << 20), Mirror()
    inputs = {"x": np.arange(4, dtype=np.float32)}
    reservoir.offer(inputs)
    mirror.offer(inputs)
    kept, queued = reservoir.snapshot()[0]["x"], mirror.queue.get_nowait()["x"]
    inputs["x"][:] = 0  # copies, not views of the request's buffer
    assert kept.tolist() == queued.tolist() == [0.0, 1.0, 2.0, 3.0]
