"""Quality drift on a real third-party image detector: NudeNet's YOLOv8n (from the nudenet wheel) on photo-like
scenes, every figure from its real outputs on ONNX Runtime, summarised by the agent's recorder and judged by the
controller's tests. Normal scenes build the baseline; several more windows of them raise nothing; the same scenes
darkened (brightness x 0.4: dusk, a dirty lens) are flagged, the verdict naming the input's brightness sketch.

Kept fast: the detector runs at 160 px (its dims are dynamic) in batches of 8, 24 rendered scenes are reused with
light augmentation (flip, shift, brightness x U(0.9, 1.1), sensor noise), and the verdict sizes are halved (100
rows judged, a 200-row baseline: each image is one row of the brightness sketch)."""

from __future__ import annotations

import numpy as np
import pytest

from zoo import signals as sig
from zoo.catalog import by_name
from zoo.fetch import ZooUnavailable, model_path

pytest.importorskip("onnxruntime")

from agent.telemetry.stats import ModelStats  # noqa: E402
from controller.telemetry.drift import DriftSettings  # noqa: E402
from controller.telemetry.tracker import QualityTracker  # noqa: E402
from protocol import Telemetry  # noqa: E402
from protocol.telemetry_fast import decode_telemetry  # noqa: E402
from targets import registry  # noqa: E402

SIZE = 160
WINDOW = 104  # images per telemetry window: 13 batches of 8
SETTINGS = DriftSettings(min_rows=100, baseline_rows=200)


def _images(scenes: list[np.ndarray], count: int, rng: np.random.Generator, brightness: float) -> np.ndarray:
    """`count` augmented scenes as NCHW float32 in [0, 1] (nudenet's preprocessing), scaled by `brightness`."""
    out = np.empty((count, 3, SIZE, SIZE), np.float32)
    for i in range(count):
        img = scenes[rng.integers(len(scenes))].astype(np.float32)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.roll(img, int(rng.integers(-12, 13)), axis=1) * rng.uniform(0.9, 1.1) * brightness
        img = np.clip(img + rng.normal(0.0, 3.0, img.shape), 0, 255)
        out[i] = img.transpose(2, 0, 1) / 255.0
    return out


def test_detector_fed_darkened_images_is_flagged_naming_the_brightness_sketch():
    try:
        path = model_path(by_name("nudenet_320n"))
    except ZooUnavailable as exc:
        pytest.skip(str(exc))
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    scenes = [sig.scene(SIZE, SIZE, seed=s, face=0.3 + 0.02 * s) for s in range(24)]
    tracker = QualityTracker(SETTINGS)
    rng = np.random.default_rng(0)

    def window(ts: float, brightness: float = 1.0):
        stats = ModelStats("detector", "1", sample_every=1, budget_us=None)
        x = _images(scenes, WINDOW, rng, brightness)
        for i in range(0, WINDOW, 8):
            batch = x[i : i + 8]
            stats.record(1.0, backend.infer({"images": batch}), {"images": batch})
        taken = stats.take()
        assert taken is not None
        message = decode_telemetry(Telemetry(device_id="cam1", models=[taken]).encode())
        track = tracker.observe("cam1", message.models[0], ts)
        assert track is not None
        return track

    for ts in range(2):  # the baseline: 208 normal images
        window(float(ts))
    calm = [window(10.0 + i).verdict for i in range(4)]
    assert all(v is not None and v.judged for v in calm)
    assert [v.moved for v in calm if v and v.flagged] == []  # no false alarm in 4 windows of the baseline's scenes
    verdict = window(20.0, brightness=0.4).verdict
    assert verdict is not None and verdict.flagged
    level = next(f for f in verdict.findings if f.kind == "level")
    assert level.flagged and level.tensor == "images" and "ks" in level.fired, level.to_json()
    assert any(t.startswith("input images: row mean median") for t in verdict.moved), verdict.moved
    print(f"calm: {[round(v.score, 3) for v in calm if v]}; darkened: {verdict.moved[:3]}")
