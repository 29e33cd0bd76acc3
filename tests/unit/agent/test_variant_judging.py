"""Issue 28, point 6: on the device, the variant contest judges agreement on real inputs when there are any: this
device's live reservoir once it holds enough, else the samples given with the version; synthetic inputs only when
no real one exists. The status's reason says which."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.deploy.downloads import Artifact
from agent.deploy.loader import Loaded
from agent.deploy.variants import MIN_COSINE, MIN_LIVE, agreement, choose, judging_inputs
from agent.serving.live import LiveTap
from agent.serving.reservoir import Reservoir
from agent.serving.table import LoadedModel
from protocol import Selection
from targets.tensors import TensorSpec


class Stub:
    """A backend computing `fn` on input x (a [1, 8] float32 vector); one that cannot take `refuse_width`."""

    def __init__(self, fn: Any, label: str, refuse_width: int | None = None) -> None:
        self.fn, self.label, self.refuse_width = fn, label, refuse_width
        self.inputs = [TensorSpec("x", "FP32", (1, 8))]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs["x"].shape[-1] != 8:
            raise ValueError(f"x must be [1, 8], got {list(inputs['x'].shape)}")
        return {"y": self.fn(inputs["x"])}

    def close(self) -> None:
        pass


def _model(fn: Any, label: str, probe: list[dict], tap: LiveTap | None = None) -> LoadedModel:
    return LoadedModel("m", "1", "a" * 64, Stub(fn, label), probe=tuple(probe), tap=tap)  # type: ignore[arg-type]


SMALL = [{"x": np.full((1, 8), 0.1 * (i + 1), np.float32)} for i in range(4)]  # what a generator draws: small values
LIVE = [{"x": np.linspace(-6, 6, 8, dtype=np.float32)[None] * (1 + i / 10)} for i in range(MIN_LIVE)]  # real: large


def _tap(inputs: list[dict]) -> LiveTap:
    reservoir = Reservoir(capacity=64)
    for x in inputs:
        reservoir.offer(x)
    return LiveTap(reservoir)


def identity(x: np.ndarray) -> np.ndarray:
    return x.copy()


def clipped(x: np.ndarray) -> np.ndarray:
    """A variant whose activations saturate: the same answers on small inputs, not on the device's real ones."""
    return np.clip(x, -1, 1)


def test_live_inputs_once_the_reservoir_holds_enough():
    original = _model(identity, "ort", SMALL, _tap(LIVE))
    inputs, on = judging_inputs(original, "4 samples given with the model")
    assert len(inputs) == MIN_LIVE and on == f"{MIN_LIVE} live input(s) kept by this device's reservoir"


def test_given_samples_until_then():
    original = _model(identity, "ort", SMALL, _tap(LIVE[:3]))
    inputs, on = judging_inputs(original, "4 samples given with the model")
    assert inputs == list(original.probe) and on == "4 samples given with the model"


def test_any_real_input_before_synthetic_ones():
    original = _model(identity, "ort", SMALL, _tap(LIVE[:2]))
    inputs, on = judging_inputs(original, "synthetic inputs (dynamic dimensions 32)")
    assert len(inputs) == 2 and "live" in on


def test_live_inputs_that_do_not_fit_this_version_are_not_used():
    """The reservoir outlives a swap: an older version's inputs of another width are left out."""
    other = [{"x": np.ones((1, 5), np.float32)} for _ in range(MIN_LIVE)]
    original = _model(identity, "ort", SMALL, _tap(other))
    inputs, on = judging_inputs(original, "synthetic inputs (static shapes)")
    assert inputs == list(original.probe) and "no real input yet" in on


def test_contest_refuses_a_variant_that_only_agrees_on_synthetic_inputs():
    original = _model(identity, "ort", SMALL, _tap(LIVE))
    variant = _model(clipped, "ort-int8", SMALL)
    assert agreement(original, variant) == pytest.approx(1.0)  # on the generator's small values it looks perfect
    live = agreement(original, variant, LIVE)
    assert live is not None and live < MIN_COSINE

    loaded = {"original": original, "int8-static": variant}

    def load(artifact: Artifact) -> Loaded:
        return Loaded(loaded[artifact.label], Selection(backend="ort", inputs="synthetic inputs (static shapes)"))

    target = SimpleNamespace(variants=[object()], sha256="a" * 64)
    artifacts = [Artifact(None, "a" * 64, 1, "onnx"), Artifact("int8-static", "b" * 64, 1, "onnx")]
    chosen = choose(target, artifacts, {}, load)  # type: ignore[arg-type]
    assert chosen.model is original
    selection = chosen.selection.model_dump()  # as the device status shows it
    (_, judged) = selection["variants"]
    assert judged["variant"] == "int8-static" and "disagrees with the original here" in judged["error"]
    assert selection["agreement_on"] == f"{MIN_LIVE} live input(s) kept by this device's reservoir"
    assert selection["reason"].endswith(f"agreement judged on {MIN_LIVE} live input(s) kept by this device's reservoir")
