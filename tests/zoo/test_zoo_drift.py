"""Quality drift on a real third-party classifier: PaddleOCR's text-orientation model (from the rapidocr wheel) on
rendered text lines. A balanced baseline (half upright, half upside down), then lines 90% upside down: the class
mix is flagged and the verdict names the class that moved; more balanced lines raise nothing."""

from __future__ import annotations

import numpy as np
import pytest

from zoo import lines
from zoo.catalog import by_name
from zoo.fetch import ZooUnavailable, model_path

pytest.importorskip("onnxruntime")

from agent.telemetry.stats import ModelStats  # noqa: E402
from controller.telemetry.drift import DriftSettings  # noqa: E402
from controller.telemetry.tracker import QualityTracker  # noqa: E402
from protocol import Telemetry  # noqa: E402
from protocol.telemetry_fast import decode_telemetry  # noqa: E402
from targets import registry  # noqa: E402

WINDOW = 200  # lines per telemetry window


def _lines(count: int, seed: int, upside_down: float) -> np.ndarray:
    """`count` rendered lines, the share `upside_down` of them turned 180 degrees."""
    rng = np.random.default_rng(seed)
    flips = rng.random(count) < upside_down
    return np.concatenate(
        [
            lines.ppocr_input(img[::-1, ::-1] if flip else img)
            for img, flip in ((lines.text_line(rng), f) for f in flips)
        ]
    )


def test_orientation_classifier_fed_upside_down_lines_is_flagged_naming_the_class():
    try:
        path = model_path(by_name("ppocr_mobile_v2_cls"))
    except ZooUnavailable as exc:
        pytest.skip(str(exc))
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    tracker = QualityTracker(DriftSettings(min_rows=200, baseline_rows=400))

    def window(seed: int, upside_down: float):
        stats = ModelStats("orientation", "1", sample_every=1, budget_us=None)
        x = _lines(WINDOW, seed, upside_down)
        for i in range(0, WINDOW, 8):
            stats.record(1.0, backend.infer({"x": x[i : i + 8]}), {"x": x[i : i + 8]})
        taken = stats.take()
        assert taken is not None
        message = decode_telemetry(Telemetry(device_id="cam1", models=[taken]).encode())
        return tracker.observe("cam1", message.models[0], float(seed))

    for seed in range(2):  # the baseline: 400 balanced lines
        window(seed, 0.5)
    calm = [window(seed, 0.5) for seed in (10, 11)]
    assert all(t is not None and t.verdict is not None and not t.verdict.flagged for t in calm), [
        t.verdict.moved for t in calm if t and t.verdict
    ]
    track = window(20, 0.9)
    assert track is not None and track.verdict is not None and track.verdict.flagged
    mix = [f for f in track.verdict.findings if f.kind == "class_mix"]
    assert mix and mix[0].flagged and mix[0].text.startswith("class mix of "), track.verdict.moved
    assert "class 1" in mix[0].text or "class 0" in mix[0].text, mix[0].text


def test_many_class_file_type_model_raises_nothing_on_a_stationary_stream_of_real_files():
    """magika standard_v3_3 (214 file types, a softmax) on real files drawn at random from one fixed pool: its class
    mix is uneven (a few types common, most rare), and the per-element tests on its probabilities flagged 10 of 10
    such windows (`output target_label block 13: std x0.083`). Judged by the class mix and top-1 confidence (the
    agent reports the rows as probabilities), calm windows raise nothing; batch 32 counts the classes on a stride."""
    import random
    import sys
    from pathlib import Path

    from zoo import signals

    try:
        path = model_path(by_name("magika_standard_v3_3"))
    except ZooUnavailable as exc:
        pytest.skip(str(exc))
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    rnd = random.Random(0)
    lib = Path(sys.prefix) / "lib"  # the installed packages: sources, data, binaries of many types
    files = sorted(p for p in lib.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size > 64)
    pool = rnd.sample(files, min(600, len(files)))

    def ends(p: Path) -> bytes:  # the 4 KiB at each end: all magika reads
        with p.open("rb") as f:
            head = f.read(4096)
            f.seek(max(len(head), p.stat().st_size - 4096))
            return head + f.read(4096)

    feats = np.concatenate([signals.magika_features(ends(p)) for p in pool])
    tracker = QualityTracker()
    verdicts = []
    for i in range(6):  # 2 windows of 256 files make the baseline, then 4 calm windows
        stats = ModelStats("magika", "1", sample_every=1, budget_us=None)
        for _ in range(8):
            x = feats[[rnd.randrange(len(feats)) for _ in range(32)]]
            stats.record(1.0, backend.infer({"bytes": x}), {"bytes": x})
        taken = stats.take()
        assert taken is not None and taken.outputs["target_label"].scores == "probabilities"
        message = decode_telemetry(Telemetry(device_id="d", models=[taken]).encode())
        track = tracker.observe("d", message.models[0], float(i))
        if i >= 2:
            assert track is not None and track.verdict is not None and track.verdict.judged
            verdicts.append(track.verdict)
    assert all("class_mix" in [f.kind for f in v.findings] for v in verdicts), verdicts[0].to_json()
    assert [v.moved for v in verdicts if v.flagged] == []
