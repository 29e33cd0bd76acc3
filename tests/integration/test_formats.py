"""The agent takes all three formats end to end: ONNX, TFLite and OpenVINO IR (.xml + .bin pushed as one tar)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_e2e import edgectl

from edgectl.sample_models import conv_net, tflite_conv_net


def v2(agent, model: str, x: np.ndarray) -> np.ndarray:
    import httpx

    body = {"inputs": [{"name": agent.metadata(model)["inputs"][0]["name"], "shape": list(x.shape),
                        "datatype": "FP32", "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{agent.api}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_tflite_and_openvino_ir_deploy_and_agree_with_onnx(controller, start_agent, tmp_path):
    ov = pytest.importorskip("openvino")
    agent = start_agent("dev1", wait_online=controller)
    onnx_path = conv_net(tmp_path / "conv.onnx")
    tflite_path = tflite_conv_net(tmp_path / "conv.tflite")  # same weights as the ONNX model, NHWC layout
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "conv.xml"))

    for path, name in ((tflite_path, "conv-tflite"), (tmp_path / "conv.xml", "conv-ir")):
        result = edgectl(controller.url, "push", str(path), "-n", name, "--to", "dev1", "--wait", "--timeout", "60")
        assert result.returncode == 0, result.stderr
    formats = {m["name"]: m["format"] for m in controller.client.models()}
    assert formats == {"conv-tflite": "tflite", "conv-ir": "openvino"}

    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(v2(agent, "conv-ir", x), want, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(v2(agent, "conv-tflite", x.transpose(0, 2, 3, 1).copy()), want, rtol=1e-3, atol=1e-5)


def test_bad_ir_and_tflite_uploads_are_refused(controller, tmp_path):
    (tmp_path / "lonely.xml").write_text("<net/>")
    result = edgectl(controller.url, "push", str(tmp_path / "lonely.xml"), "-n", "ir")
    assert result.returncode == 1 and "needs its weights file" in result.stderr
    import tarfile

    with tarfile.open(tmp_path / "two.tar", "w") as tar:
        for n in ("a.xml", "b.xml"):
            (tmp_path / n).write_text("<net/>")
            tar.add(tmp_path / n, arcname=n)
    result = edgectl(controller.url, "push", str(tmp_path / "two.tar"), "-n", "ir")
    assert result.returncode == 1 and "exactly one .xml" in result.stderr
    (tmp_path / "fake.tflite").write_bytes(b"\0" * 64)
    result = edgectl(controller.url, "push", str(tmp_path / "fake.tflite"), "-n", "tfl")
    assert result.returncode == 1 and "TFLite" in result.stderr
