"""Shape specialization: a model with dynamic dims, called with one shape all day, gets a static OpenVINO compilation
for that shape (bounded, LRU); other shapes keep running on the dynamic one and give the same answers."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from edgectl.sample_models import conv_net
from targets import registry

pytest.importorskip("openvino")


def dynamic_conv_net(path):
    """conv_net with batch, height and width left dynamic, as many real detectors declare them."""
    conv_net(path)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((0, "batch"), (2, "height"), (3, "width")):
        dims[index].ClearField("dim_value")
        dims[index].dim_param = name
    onnx.save(model, str(path))
    return path


def wait_compiled(specializer, shapes, timeout=30.0):
    deadline = time.monotonic() + timeout
    while shapes not in specializer.compiled and time.monotonic() < deadline:
        time.sleep(0.02)
    return shapes in specializer.compiled


def test_static_specialization_for_seen_shapes(tmp_path):
    path = dynamic_conv_net(tmp_path / "dyn.onnx")
    backend = registry.create("openvino", {"specialize_shapes": 2, "specialize_after": 3})
    backend.load(path, "onnx")
    assert backend.inputs[0].shape == (-1, 3, -1, -1) and backend.specializer is not None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 48, 64)).astype(np.float32)
    dynamic_answer = backend.infer({"x": x})["probs"]
    for _ in range(3):
        backend.infer({"x": x})
    key = ((1, 3, 48, 64),)
    assert wait_compiled(backend.specializer, key)
    np.testing.assert_allclose(backend.infer({"x": x})["probs"], dynamic_answer, rtol=1e-4, atol=1e-6)

    # other shapes still work; the cache stays bounded (LRU)
    for h in (32, 40, 56):
        y = rng.standard_normal((2, 3, h, h)).astype(np.float32)
        for _ in range(3):
            backend.infer({"x": y})
        wait_compiled(backend.specializer, ((2, 3, h, h),))
    assert len(backend.specializer.compiled) == 2
    assert key not in backend.specializer.compiled


def test_static_models_are_not_specialized(tmp_path):
    backend = registry.create("openvino")
    backend.load(conv_net(tmp_path / "static.onnx"), "onnx")
    # only the batch dim is dynamic here, which still counts: a fixed batch gets its own compilation
    assert backend.specializer is not None
    backend = registry.create("openvino", {"specialize_shapes": 0})
    backend.load(tmp_path / "static.onnx", "onnx")
    assert backend.specializer is None
