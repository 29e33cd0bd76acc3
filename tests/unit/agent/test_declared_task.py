"""The task declared at push (`edgectl push --task`, the desired model's `task`): a real ONNX classifier whose
scores come out as [N, 1, 4] (a shape the agent cannot tell from a regression's) has its class mix counted and judged
once declared a classifier, and a 4-output regression ([N, 4], which looks like class scores) has none once declared
a regression. The declaration reaches the statistics through the recorder, before or after the version loads, and
travels in the desired state's entry."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry.stats import ModelStats, Recorder
from controller.telemetry.drift import drift_verdict
from controller.telemetry.summary import from_window
from protocol import Desired, DesiredModel


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """'ambiguous': the 4-class MLP's softmax reshaped to [N, 1, 4]; 'linear': x @ w, [N, 4]; on ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgectl import sample_models
    from targets import registry

    d = tmp_path_factory.mktemp("models")
    mlp = onnx.load(str(sample_models.mlp(d / "mlp.onnx")))
    graph = mlp.graph
    out = graph.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 1, 4], np.int64), "shape3"))
    graph.node.append(helper.make_node("Reshape", [out.name, "shape3"], ["scores"]))
    graph.output.remove(out)
    graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1, 4]))
    (d / "ambiguous.onnx").write_bytes(mlp.SerializeToString())
    w = np.random.default_rng(5).standard_normal((16, 4)).astype(np.float32) / 4
    linear = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(linear, opset_imports=[helper.make_opsetid("", 17)])
    (d / "linear.onnx").write_bytes(model.SerializeToString())
    loaded = {}
    for name in ("ambiguous", "linear"):
        backend = registry.create("onnxruntime")
        backend.load(d / f"{name}.onnx", "onnx")
        loaded[name] = backend
    return loaded


def window(backend, stats: ModelStats, rng: np.random.Generator, shift: float = 0.0):
    for _ in range(25):
        x = (rng.standard_normal((10, 16)) + shift).astype(np.float32)
        stats.record(1.0, backend.infer({"x": x}), {"x": x})
    taken = stats.take()
    assert taken is not None
    return taken


def test_a_declared_classifier_with_an_ambiguous_shape_has_its_class_mix_counted_and_judged(backends):
    rng = np.random.default_rng(0)
    auto = window(backends["ambiguous"], ModelStats("m", "1", sample_every=1, budget_us=None), rng)
    assert auto.outputs["scores"].classes is None  # [N, 1, 4]: not taken for class scores by its shape
    recorder = Recorder(sample_every=1, budget_us=None)
    recorder.declare("m", "1", "classifier")  # the desired state names it before the version loads
    stats = recorder.model("m", "1")
    base = from_window(window(backends["ambiguous"], stats, rng))
    classes = base.outputs["scores"].classes if base else None
    assert classes and sum(classes.values()) == 250 and len(classes) >= 2, classes
    later = from_window(window(backends["ambiguous"], stats, rng))
    shifted = from_window(window(backends["ambiguous"], stats, rng, shift=3.0))
    assert base is not None and later is not None and shifted is not None
    assert not drift_verdict(base, later).flagged
    verdict = drift_verdict(base, shifted)
    assert any(f.kind == "class_mix" and f.flagged for f in verdict.findings), verdict.moved


def test_a_declared_regression_counts_no_classes_and_a_later_declaration_applies(backends):
    rng = np.random.default_rng(1)
    recorder = Recorder(sample_every=1, budget_us=None)
    stats = recorder.model("lin", "1")
    assert window(backends["linear"], stats, rng).outputs["y"].classes  # auto: [N, 4] floats read as scores
    recorder.declare("lin", "1", "regression")  # the desired state arrives after the version loaded (restart)
    taken = window(backends["linear"], stats, rng)
    assert taken.outputs["y"].classes is None and taken.outputs["y"].top1_hist is None
    assert taken.outputs["y"].elements is not None and taken.outputs["y"].elements.rows == 250
    recorder.declare("lin", "1", None)  # auto again
    assert window(backends["linear"], stats, rng).outputs["y"].classes


def test_the_task_travels_in_the_desired_state():
    entry = DesiredModel(name="m", version="1", sha256="a" * 64, size=1, task="classifier")
    again = Desired.model_validate_json(Desired(device_id="d", models=[entry]).model_dump_json())
    assert again.models[0].task == "classifier"
    assert DesiredModel.model_validate({"name": "m", "version": "1", "sha256": "a" * 64, "size": 1}).task is None
    with pytest.raises(ValueError):
        DesiredModel(name="m", version="1", sha256="a" * 64, size=1, task="detector")  # type: ignore[arg-type]
