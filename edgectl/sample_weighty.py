"""A model whose memory is its weight, for memory budget tests and the soak (bench/memory_soak.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def weighty(path: Path, n: int = 4096, seed: int = 0) -> Path:
    """y = x @ W, W an n x n float32 initializer (4096: 64 MiB); `weight(n, seed)` gives W to check answers."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "weighty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight(n, seed), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet")
    model.ir_version = 8
    save(model, str(path))
    return path


def weight(n: int = 4096, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32) / np.float32(n**0.5)
