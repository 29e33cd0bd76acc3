"""ONNX Runtime's memory arena and memory pattern (issue 27, point 5): the options reach the session the backend
builds (from the config as the agent's backend_options parse it), and the status' selection reports the arena."""

from __future__ import annotations

import numpy as np

from agent.deploy.loader import arena_of
from edgectl import sample_models
from targets.backends.onnxruntime import OnnxRuntimeBackend
from targets.registry import parse_config
from targets.selection import Selection


def test_arena_and_pattern_reach_the_session(tmp_path):
    path = sample_models.mlp(tmp_path / "mlp.onnx")
    for arena in (True, False):
        config = parse_config({"type": "onnxruntime", "cpu_mem_arena": arena, "mem_pattern": arena})
        backend = OnnxRuntimeBackend(config)
        backend.load(path, "onnx")
        options = backend.session.get_session_options()
        assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (arena, arena)
        x = {s.name: np.ones([d if d > 0 else 1 for d in s.shape], np.float32) for s in backend.inputs}
        assert all(np.isfinite(v).all() for v in backend.infer(x).values())
        assert arena_of(Selection(backend, backend.label, [], "")) == {"arena": "on" if arena else "off"}
    default = OnnxRuntimeBackend(parse_config({"type": "onnxruntime"}))
    default.load(path, "onnx")
    assert default.session.get_session_options().enable_cpu_mem_arena is True  # chosen by bench/arena.py
    assert arena_of(Selection(object(), "other", [], "")) == {}  # type: ignore[arg-type]
