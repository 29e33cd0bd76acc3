"""The live input reservoir: a device keeps a uniform sample of real request inputs in memory, `edgectl capture`
fetches it on request, and the file feeds `edgectl push --sample`; one config key keeps nothing."""

from __future__ import annotations

import json

import httpx
import numpy as np
from conftest import wait_model_state
from test_e2e import edgectl

from edgectl.sample_models import mlp
from targets.inputs import unpack_samples


def send(agent, x: np.ndarray) -> None:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert httpx.post(f"{agent.api}/v2/models/m/infer", json=body, timeout=10).status_code == 200


def sensor_frames(count: int) -> list[np.ndarray]:
    """Distinct rows that look like a drifting 16-channel sensor: a slow sine per channel plus noise."""
    t = np.arange(count)[:, None] / 25.0
    phase = np.linspace(0, np.pi, 16)[None, :]
    rows = np.sin(t + phase) + 0.05 * np.random.default_rng(3).standard_normal((count, 16))
    return [r[None, :].astype(np.float32) for r in rows]


def test_capture_fetches_a_sample_of_real_requests_that_push_accepts(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", config="capture_inputs = 12\n", wait_online=controller)
    v1 = controller.client.upload_model(mlp(model_dir / "cap1.onnx", seed=71), "m", None)
    controller.client.deploy("m", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    sent = sensor_frames(60)
    for x in sent:
        send(agent, x)

    out = tmp_path / "live.npz"
    done = edgectl(controller.url, "capture", "dev1", "--model", "m", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["count"] == 12 and summary["seen"] == 60 and summary["version"] == v1["version"]
    kept = unpack_samples(out)
    assert len(kept) == 12
    sent_rows = {x.tobytes(): i for i, x in enumerate(sent)}
    indices = [sent_rows[s["x"].tobytes()] for s in kept]  # each one a request really sent
    assert len(set(indices)) == 12 and max(indices) >= 12  # sampled across the traffic, not the first twelve

    # ... and calibrate the converters
    from converters.calibration import load_calibration
    from targets.tensors import TensorSpec

    calibration = load_calibration(out, [TensorSpec("x", "FP32", (-1, 16))])
    assert len(calibration) == 12 and not calibration.synthetic

    # the captured requests travel with the next version as its samples
    v2 = mlp(model_dir / "cap2.onnx", seed=72)
    pushed = edgectl(controller.url, "push", str(v2), "--name", "m", "--sample", str(out), "--to", "dev1", "--json")
    assert pushed.returncode == 0, pushed.stderr
    entry = wait_model_state(controller, "dev1", "m", json.loads(pushed.stdout)["model"]["sha256"], {"serving"})
    assert entry["selection"]["inputs"].startswith("12 sample"), entry["selection"]


def test_capture_off_keeps_nothing_and_says_so(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", config="capture_inputs = 0\n", wait_online=controller)
    v1 = controller.client.upload_model(mlp(model_dir / "cap3.onnx", seed=73), "m", None)
    controller.client.deploy("m", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    for x in sensor_frames(5):
        send(agent, x)
    done = edgectl(controller.url, "capture", "dev1", "--model", "m", "--out", str(tmp_path / "none.npz"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "keeps no request inputs" in done.stderr and "capture_inputs" in done.stderr
    assert not (tmp_path / "none.npz").exists()
