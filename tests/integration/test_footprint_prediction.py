"""Issue 27 target: the trial worker's predicted footprint within 15% of what the agent's admission measures loading
and warming the winner in its own process (bench/footprint.py, a fresh process already serving a model), on real zoo
models whose memory grows on the second run (ONNX Runtime's memory pattern) or whose judging imports code
(ddddocr)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["ppocr_v4_det", "tashkeel_bilstm_int8"])
def test_predicted_within_15_percent_of_measured(name, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))  # the zoo package, before bench/zoo.py
    from zoo import catalog, fetch

    sys.path.append(str(ROOT / "bench"))
    from footprint import run_fresh

    try:
        path = fetch.model_path(catalog.by_name(name))
    except Exception as exc:  # noqa: BLE001 - no network and no cache
        pytest.skip(f"zoo model unavailable: {exc}")
    figures = run_fresh(path, name, "onnxruntime:cpu", tmp_path)
    assert "error" not in figures, figures
    predicted, measured = figures["predicted_mb"], figures["measured_mb"]
    print(name, figures)
    assert abs(predicted - measured) <= 0.15 * measured, figures
