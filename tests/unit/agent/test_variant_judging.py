"""Issue 28, point 6: on the device, the variant contest judges agreement on real inputs when there are any: this
device's live reservoir once it holds enough, else the samples given with the version; synthetic inputs only when
no real one exists. The status's reason says which. And the run-off: variants clearly slower than the original are
closed at once, the close ones race it, and the fastest serves."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agent.deploy.downloads import Artifact
from agent.deploy.loader import Loaded
from agent.deploy.variants import MIN_COSINE, MIN_LIVE, Contest, Entrant, agreement, choose, judging_inputs
from agent.serving.live import LiveTap
from agent.serving.reservoir import Reservoir
from agent.serving.table import LoadedModel
from protocol import Selection, VariantTrial
from targets import registry
from targets.inputs import synthesize
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


def _padded(path: Path, extra: int) -> Path:
    """y = x @ w + 0 * sum(relu(x @ h)): the same answer whatever `extra` (h's width), which sets how long it takes."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["base"])]
    inits = [w]
    if extra:
        h = numpy_helper.from_array(rng.standard_normal((64, extra)).astype(np.float32), "h")
        zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
        inits += [h, zero]
        nodes += [
            helper.make_node("MatMul", ["x", "h"], ["wide"]),
            helper.make_node("Relu", ["wide"], ["act"]),
            helper.make_node("ReduceSum", ["act"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["base", "nothing"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["base"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _unrunnable(path: Path) -> Path:
    """x[4, 64] reshaped to [3, 5]: ONNX Runtime loads it and fails at every run."""
    from onnx import TensorProto, helper, numpy_helper, save

    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "unrunnable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [shape],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_contest_runs_off_the_close_ones_and_closes_the_rest(tmp_path):
    """A variant clearly slower than the original never reaches the run-off (it is closed at once); the original and
    every variant not slower than it do, however far behind the best; the winner is the run-off's fastest, and every
    other finalist is closed."""

    def entrant(label: str, extra: int, model_file: Path | None = None) -> Entrant:
        backend = registry.create("onnxruntime")
        backend.load(model_file or _padded(tmp_path / f"{label}.onnx", extra), "onnx")
        probe = (synthesize(backend.inputs, 1, batch=1),)
        model = LoadedModel(label, "1", "0" * 64, backend, variant=None if label == "original" else label, probe=probe)
        result = VariantTrial(variant=label, backend="onnxruntime")
        return Entrant(model, Selection(), Artifact(label, "0" * 64, 0, "onnx"), result)

    original = entrant("original", 20_000)
    original.result.p50_ms = 1.0  # the standalone measure; the run-off replaces it
    contest = Contest(original)
    lean, heavy, trimmed = entrant("lean", 0), entrant("heavy", 200_000), entrant("trimmed", 12_000)
    contest.enter(heavy)
    contest.enter(lean)
    contest.enter(trimmed)
    broken = entrant("broken", 0, _unrunnable(tmp_path / "broken.onnx"))
    contest.enter(broken)  # loads, but fails at its first inference: left out, the contest goes on
    winner = contest.decide()

    results = {r.variant: r.model_dump() for r in contest.results}  # as the device status shows them
    assert winner is lean, contest.results
    assert heavy.result.vs_original > 2 and lean.result.vs_original < 0.5
    assert "runoff_p50_ms" not in results["heavy"]  # clearly slower than the original: closed at once
    assert results["original"]["runoff_p50_ms"] > results["lean"]["runoff_p50_ms"] > 0
    assert results["trimmed"]["runoff_p50_ms"] > 0  # far behind lean, but not slower than the original: it ran
    assert results["broken"]["error"].startswith("fails to run here") and "runoff_p50_ms" not in results["broken"]
    assert results["original"]["p50_ms"] == results["original"]["runoff_p50_ms"]  # every p50 on the run-off's scale
    assert results["heavy"]["p50_ms"] == pytest.approx(results["original"]["p50_ms"] * heavy.result.vs_original)
    inputs = {"x": np.ones((4, 64), np.float32)}
    for loser in (original, heavy, trimmed):
        with pytest.raises(Exception):  # noqa: B017 - closed: its session is gone
            loser.model.backend.infer(inputs)
    assert winner.model.backend.infer(inputs)["y"].shape == (4, 8)
