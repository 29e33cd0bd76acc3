"""The fleet comparison by hardware class, with simulated devices' windows of the real 4-class MLP on ONNX Runtime
(summarised by the agent's recorder, decoded as the controller reads them): three x86 CPU boxes, one of them fed
darker inputs, and two Jetsons whose inputs all differ from the x86 boxes' the same way (their camera pipeline). The
darkened box is named as differing from its class's peers; the Jetsons, compared with each other, are not; a class
of two that differ says it cannot tell which moved. `edgectl drift fleet` prints it per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.telemetry.stats import ModelStats
from controller.telemetry.drift import DriftSettings
from controller.telemetry.tracker import QualityTracker
from edgectl import sample_models
from edgectl.commands.telemetry import _fleet_drift
from edgectl.output import console
from protocol import Telemetry
from protocol.labels import hardware_class, measured_labels
from protocol.telemetry_fast import decode_telemetry

X86 = hardware_class(measured_labels({"arch": "x86_64", "memory_mb": 8000}))
JETSON = hardware_class(measured_labels({"arch": "aarch64", "jetson": {"model": "Orin Nano"}, "memory_mb": 7600}))
SETTINGS = DriftSettings(min_rows=200, baseline_rows=200)


@pytest.fixture(scope="module")
def feed(tmp_path_factory):
    from targets import registry

    backend = registry.create("onnxruntime")
    backend.load(Path(sample_models.mlp(tmp_path_factory.mktemp("m") / "mlp.onnx")), "onnx")
    rng = np.random.default_rng(0)

    def run(tracker: QualityTracker, device: str, shift: float, windows: int = 3) -> None:
        for i in range(windows):  # the first two build the device's baseline (two halves, alike), the next is judged
            stats = ModelStats("mlp", "1", sample_every=1, budget_us=None)
            for _ in range(25):
                x = (rng.standard_normal((10, 16)) + shift).astype(np.float32)
                stats.record(1.0, backend.infer({"x": x}), {"x": x})
            taken = stats.take()
            assert taken is not None
            model = decode_telemetry(Telemetry(device_id=device, ts=1.0 + i, models=[taken]).encode()).models[0]
            tracker.observe(device, model, 1.0 + i)

    return run


def test_the_device_that_differs_from_its_class_is_named_and_other_classes_are_not_mixed_in(feed):
    tracker = QualityTracker(SETTINGS)
    classes = {"cam-1": X86, "cam-2": X86, "cam-3": X86, "jet-1": JETSON, "jet-2": JETSON}
    for device, shift in (("cam-1", 0.0), ("cam-2", 0.0), ("cam-3", -2.0), ("jet-1", 1.5), ("jet-2", 1.5)):
        feed(tracker, device, shift)
    result = tracker.fleet("mlp", classes=classes)
    groups = {g["hw_class"]: g for g in result["classes"]}
    assert set(groups) == {X86, JETSON} and X86 == "x86_64/cpu/generic/8" and JETSON.startswith("aarch64/jetson-gpu")
    assert groups[X86]["differs"] == ["cam-3"], groups[X86]
    assert groups[X86]["note"].startswith("cam-3 differs from the peers: "), groups[X86]
    assert groups[JETSON]["differs"] == [] and groups[JETSON]["devices"] == ["jet-1", "jet-2"]
    by_device = {e["device"]: e for e in result["devices"]}
    assert by_device["cam-3"]["flagged"] and by_device["cam-3"]["differs"]
    assert not by_device["cam-1"]["flagged"] and not by_device["jet-1"]["flagged"], by_device["cam-1"]["moved"]
    assert by_device["cam-1"]["peer_rows"] == 250  # judged again against cam-2 alone, cam-3 left out

    unclassed = tracker.fleet("mlp")  # every device one class: the Jetsons weigh in as peers
    assert set(unclassed["classes"][0]["differs"]) != {"cam-3"}, unclassed["classes"][0]

    with console.capture() as captured:
        _fleet_drift("mlp", {"model": "mlp", **result})
    text = " ".join(captured.get().split())  # unwrapped
    assert "x86_64/cpu/generic/8 (mlp@1): 3 devices; cam-3 differs from the peers: " in text, text
    assert "cam-3 vs its class's peers: drift" in text and "jet-2 vs its class's peers: ok, " in text, text


def test_two_devices_of_a_class_that_differ_cannot_say_which_moved(feed):
    tracker = QualityTracker(SETTINGS)
    feed(tracker, "cam-1", 0.0)
    feed(tracker, "cam-2", 2.0)
    (group,) = tracker.fleet("mlp", classes={"cam-1": X86, "cam-2": X86})["classes"]
    assert group["differs"] == [] and "a third device of the class" in group["note"], group
