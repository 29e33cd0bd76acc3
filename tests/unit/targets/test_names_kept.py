"""Every backend exposes the model's own input and output names, also where the runtime would rename a tensor
(OpenVINO merges the names of a fused Identity/Cast into the port and may report the internal one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from targets import registry
from targets.probe import probe
from targets.selection import candidates, load_candidate, select_backend

onnx = pytest.importorskip("onnx")
MODEL_NAMES = (["x", "input_lengths"], ["y"])


@pytest.fixture(scope="module")
def renamed_model(tmp_path_factory) -> Path:
    """`input_lengths` passes through an Identity and a Cast named like a traced PyTorch graph's, as in the TTS model
    whose API answered `unknown input(s) ['input_lengths']`."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["input_lengths"], ["/attn_layers.0/ccm/gru1/Cast_output_0"]),
            helper.make_node("Cast", ["/attn_layers.0/ccm/gru1/Cast_output_0"], ["/c"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "/c"], ["/out/Add_output_0"]),
            helper.make_node("Identity", ["/out/Add_output_0"], ["y"]),
        ],
        "renamed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    path = tmp_path_factory.mktemp("names") / "renamed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def names(backend) -> tuple[list[str], list[str]]:
    return [s.name for s in backend.inputs], [s.name for s in backend.outputs]


@pytest.mark.parametrize("backend", registry.installed_backends("onnx"))
def test_each_backend_alone_keeps_the_names(renamed_model, backend):
    loaded = registry.create(backend)
    loaded.load(renamed_model, "onnx")
    assert names(loaded) == MODEL_NAMES
    x = {"x": np.ones(3, np.float32), "input_lengths": np.arange(3, dtype=np.int64)}
    np.testing.assert_allclose(loaded.infer(x)["y"], [1.0, 2.0, 3.0])


def test_every_candidate_of_the_trial_keeps_the_names(renamed_model):
    """The trial hands the reference's names to every other runtime, and the chosen backend serves under them."""
    hardware = probe() | {"cpu_vendor": "intel"}
    chosen = select_backend(renamed_model, "onnx", hardware, budget_s=0.3)
    assert names(chosen.backend) == MODEL_NAMES
    assert all(r.agreed for r in chosen.candidates if r.precision == "full"), chosen.candidates
    for cand in candidates("onnx", hardware):
        options = chosen.options if cand.name == chosen.choice else {}
        assert names(load_candidate(cand, renamed_model, "onnx", options)) == MODEL_NAMES, cand.name


@pytest.mark.skipif("openvino" not in registry.installed_backends("onnx"), reason="needs OpenVINO")
def test_openvino_takes_the_reference_names_by_position(renamed_model):
    backend = registry.create("openvino", {"input_names": ["a", "b"], "output_names": ["c"]})
    backend.load(renamed_model, "onnx")
    assert names(backend) == (["a", "b"], ["c"])
