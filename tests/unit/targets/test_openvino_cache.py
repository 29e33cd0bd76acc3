"""OpenVINO CPU's cache settings (issue 27, point 5): the runtime cache capacity reaches the compiled model, and the
status' selection.memory says what the serving OpenVINO backend runs with (OpenVINO's default kept: a smaller
cache saved memory only after many shapes and cost x1.06-1.16 per run, bench/openvino_cache.py)."""

from __future__ import annotations

import numpy as np

from agent.deploy.loader import arena_of, openvino_cache_of
from edgectl import sample_models
from protocol.status import Memory
from targets.backends.openvino import OpenVinoBackend, compile_properties
from targets.registry import parse_config
from targets.selection import Selection


def test_the_capacity_reaches_the_compile_properties_and_the_status_reports_it(tmp_path):
    path = sample_models.mlp(tmp_path / "mlp.onnx")
    for options, capacity in (({}, "default"), ({"runtime_cache_capacity": 0}, "0")):
        backend = OpenVinoBackend(parse_config({"type": "openvino", "cache_dir": str(tmp_path / "ov"), **options}))
        backend.load(path, "onnx")
        properties = compile_properties(backend.config)  # type: ignore[arg-type]
        assert properties.get("CPU_RUNTIME_CACHE_CAPACITY") == (capacity if options else None)
        x = {s.name: np.ones([d if d > 0 else 1 for d in s.shape], np.float32) for s in backend.inputs}
        assert all(np.isfinite(v).all() for v in backend.infer(x).values())
        selection = Selection(backend, backend.label, [], "")
        memory = Memory.model_validate(arena_of(selection) | openvino_cache_of(selection))
        assert (memory.runtime_cache, memory.model_cache, memory.arena) == (capacity, "on", None)
    plain = OpenVinoBackend(parse_config({"type": "openvino"}))
    assert openvino_cache_of(Selection(plain, "openvino:cpu", [], ""))["model_cache"] == "off"
    assert openvino_cache_of(Selection(object(), "other", [], "")) == {}  # type: ignore[arg-type]
