"""`edgectl infer --input x.npy` for every format: the device names the lone array after the single input of the
version it serves (the controller stores no signature for TFLite), and a multi-input model says what it needs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import wait_model_state
from test_e2e import edgectl

from edgectl import sample_models


@pytest.mark.parametrize("kind", ["tflite", "onnx-two-inputs"])
def test_infer_npy_on_the_version_the_device_serves(controller, start_agent, tmp_path, kind):
    start_agent("dev1", wait_online=controller)
    if kind == "tflite":
        pytest.importorskip("tensorflow")
        path = sample_models.tflite_conv_net(tmp_path / "conv.tflite")
    else:
        path = sample_models.scaled_sum(tmp_path / "scaled_sum.onnx")  # inputs x and k
    record = controller.client.upload_model(path, "m", None)
    controller.client.deploy("m", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"}, timeout=60)
    meta_shape = [1, 32, 32, 3] if kind == "tflite" else [1, 4]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal(meta_shape).astype(np.float32))
    done = edgectl(controller.url, "infer", "dev1", "--model", "m", "--input", str(tmp_path / "x.npy"), "--json")
    if kind == "tflite":
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["model_version"] == record["version"] and out["outputs"], out
    else:
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "the model takes 2 inputs" in done.stderr and ".npz keyed by input name" in done.stderr
