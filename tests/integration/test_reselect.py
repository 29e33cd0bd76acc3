"""Re-selection on live shapes: requests with shapes the trial never timed make the agent run the trial again on
them in the background; the serving backend changes only if the new choice agrees and is faster on them."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
from conftest import model_state, wait_model_state, wait_until

from edgectl.sample_models import mlp


def infer(agent, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{agent.api}/v2/models/m/infer", json=body, timeout=10).json()
    out = answer["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_live_shapes_the_trial_never_timed_are_timed_in_the_background(controller, start_agent, model_dir):
    config = "reselect_interval_s = 0.5\ncapture_inputs = 16\n"
    agent = start_agent("dev1", config=config, wait_online=controller)
    path = mlp(model_dir / "rs1.onnx", seed=81)
    v1 = controller.client.upload_model(path, "m", None)
    controller.client.deploy("m", v1["version"], ["dev1"])
    first = wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    assert "live" not in first["selection"]

    rng = np.random.default_rng(8)
    batches = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(12)]  # batches of 3: never timed
    for x in batches:
        infer(agent, x)

    def decided():
        entry = model_state(controller, "dev1", "m")
        return entry and (entry.get("selection") or {}).get("live") and entry

    entry = wait_until(decided, 60, "a re-selection on live shapes")
    live = entry["selection"]["live"]
    assert live.startswith(("kept", "switched to")) and "p50" in live, live
    if live.startswith("switched to"):  # the new trial ran on the live inputs, and its backend serves now
        assert entry["serving"]["backend"] in live and entry["selection"]["inputs"].startswith("8 sample")
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in batches[:3]:  # whatever serves now answers as the model's own runtime does
        want = reference.run(None, {"x": x})[0]
        np.testing.assert_allclose(infer(agent, x), want, rtol=1e-3, atol=1e-5)
    assert "re-selection of m failed" not in agent.log.read_text()
