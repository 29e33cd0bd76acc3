"""Issue 27 target: the trial worker's predicted footprint within 15% of what the agent's admission measures loading
and warming the model in its own process (bench/footprint.py, a fresh process already serving a model on every
runtime in play), on real zoo models: memory that grows on the second run (ONNX Runtime's memory pattern), judging
that imports code (ddddocr), a load whose heap holes the agent's allocator refilled (nudenet_320n: the allocator
pinned and trimmed, targets/footprint.py), and OpenVINO, whose one-time setup a fresh worker used to count and whose
static copy of a dynamic model (compiled in a thread after a shape's third run) the agent held and the trial did not
(magika_standard_v3_3: 19.5 predicted vs 25.6 measured, or 21.4 when read before the copy was done)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("ppocr_v4_det", "onnxruntime:cpu"),
        ("tashkeel_bilstm_int8", "onnxruntime:cpu"),
        ("nudenet_320n", "onnxruntime:cpu"),
        ("ppocr_v4_det", "openvino:cpu"),
        ("magika_standard_v3_3", "openvino:cpu"),
    ],
)
def test_predicted_within_15_percent_of_measured(name, backend, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))  # the zoo package, before bench/zoo.py
    from zoo import catalog, fetch

    sys.path.append(str(ROOT / "bench"))
    from footprint import run_fresh

    if backend.startswith("openvino"):
        pytest.importorskip("openvino")
    try:
        path = fetch.model_path(catalog.by_name(name))
    except Exception as exc:  # noqa: BLE001 - no network and no cache
        pytest.skip(f"zoo model unavailable: {exc}")
    figures = run_fresh(path, name, backend, tmp_path)
    assert "error" not in figures, figures
    predicted, measured = figures["predicted_mb"], figures["measured_mb"]
    print(name, backend, figures)
    assert abs(predicted - measured) <= 0.15 * measured, figures
