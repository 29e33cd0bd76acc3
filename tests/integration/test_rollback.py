"""Automatic rollback: a new version that answers NaN/Inf, errors on live requests, or runs much slower than the
serving one never keeps serving; the reason shows in the status, and the rejected version is not retried."""

from __future__ import annotations

import httpx
import numpy as np
from conftest import model_state, wait_model_state, wait_until
from onnx import TensorProto, helper, numpy_helper
from test_e2e import edgectl

from edgectl.sample_models import _graph_model, _save, mlp


def custom_model(path, nodes, inits, output_shape=("batch", 4)):
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32 if k != "shape" else np.int64), k) for k, v in inits.items()],
    )
    return _save(_graph_model(graph), path)


def fails_above_batch_one(path):
    """Fine on the warm-up (batch 1), a runtime error for any larger batch: Reshape to a fixed [1, 16]."""
    w = np.random.default_rng(5).standard_normal((16, 4)) / 4
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return custom_model(path, nodes, {"w": w, "shape": [1, 16]})


def nan_for_large_inputs(path):
    """sqrt(100 - x^2): finite for the warm-up's standard-normal inputs, NaN once |x| > 10."""
    w = np.ones((16, 4)) / 16
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Sub", ["hundred", "sq"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["probs"]),
    ]
    return custom_model(path, nodes, {"w": w, "hundred": [100.0]})


def always_nan(path):
    nodes = [
        helper.make_node("Sub", ["x", "x"], ["zero"]),
        helper.make_node("Div", ["zero", "zero"], ["nan"]),
        helper.make_node("MatMul", ["nan", "w"], ["probs"]),
    ]
    return custom_model(path, nodes, {"w": np.ones((16, 4))})


def infer(agent, x):
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return httpx.post(f"{agent.api}/v2/models/m/infer", json=body, timeout=10)


def deploy(controller, path, name="m"):
    record = controller.client.upload_model(path, name, None)
    controller.client.deploy(name, record["version"], ["dev1"])
    return record


def test_errors_in_the_health_window_roll_back(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "rb1.onnx", seed=51))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    bad = deploy(controller, fails_above_batch_one(tmp_path / "bad.onnx"))
    wait_model_state(controller, "dev1", "m", bad["sha256"], {"serving"})

    statuses = [infer(agent, np.ones((2, 16), np.float32)).status_code for _ in range(3)]
    assert statuses == [500, 500, 500]
    entry = wait_model_state(controller, "dev1", "m", bad["sha256"], {"failed"}, timeout=10)
    assert entry["reason"]["code"] == "rolled_back"
    assert "3 inference errors" in entry["reason"]["message"] and "version 1" in entry["reason"]["message"]
    assert entry["serving"]["sha256"] == v1["sha256"]
    assert infer(agent, np.ones((2, 16), np.float32)).json()["model_version"] == v1["version"]

    # the rolled-back version is not deployed again: not after the desired state is re-sent, not after a restart
    controller.stop()
    controller.start()
    agent.stop()
    agent.start()
    wait_until(lambda: agent.metadata("m"), 20, "agent serving from disk")
    wait_until(lambda: controller.device("dev1")["online"], 20, "dev1 online")
    entry = wait_until(lambda: (e := model_state(controller, "dev1", "m")) and e["state"] == "failed" and e, 20, "x")
    assert entry["reason"]["code"] == "rolled_back" and agent.metadata("m")["versions"] == [v1["version"]]


def test_nan_on_a_live_request_rolls_back(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "rb2.onnx", seed=52))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    bad = deploy(controller, nan_for_large_inputs(tmp_path / "nan.onnx"))
    wait_model_state(controller, "dev1", "m", bad["sha256"], {"serving"})
    assert infer(agent, np.ones((1, 16), np.float32)).status_code == 200
    assert infer(agent, np.full((1, 16), 20.0, np.float32)).status_code == 200  # answered, but NaN
    entry = wait_model_state(controller, "dev1", "m", bad["sha256"], {"failed"}, timeout=10)
    assert entry["reason"]["code"] == "rolled_back" and "NaN/Inf" in entry["reason"]["message"]
    assert agent.metadata("m")["versions"] == [v1["version"]]


def test_nan_on_warm_up_and_latency_regression_never_swap_in(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", config="backend_trial = false\n", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "rb3.onnx", seed=53))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})

    nan = deploy(controller, always_nan(tmp_path / "always-nan.onnx"))
    entry = wait_model_state(controller, "dev1", "m", nan["sha256"], {"failed"})
    assert entry["reason"]["code"] == "nonfinite_output" and entry["serving"]["sha256"] == v1["sha256"]

    slow = deploy(controller, mlp(model_dir / "rb-slow.onnx", seed=54, pad_mb=40))  # same model, ~1000x the work
    entry = wait_model_state(controller, "dev1", "m", slow["sha256"], {"failed"}, timeout=60)
    assert entry["reason"]["code"] == "latency_regression", entry["reason"]
    assert "p50 latency" in entry["reason"]["message"] and "samples" in entry["reason"]["message"]
    shadow = entry["shadow"]  # the figures behind the verdict travel with the status
    assert shadow["inputs"] == "samples" and shadow["against"] == v1["version"] and shadow["pairs"] >= 8
    assert shadow["p50_ms"] > 2 * shadow["serving_p50_ms"]
    shown = edgectl(controller.url, "status", "dev1", "--model", "m")  # the figures, as an operator reads them
    text = " ".join(shown.stdout.split())  # as wide as the terminal: lines may wrap
    assert shown.returncode == 0 and f"shadow check beside version {v1['version']} on" in text
    assert "samples inputs: p50" in text and "(+" in text, text
    assert agent.metadata("m")["versions"] == [v1["version"]]


def test_agent_with_trusted_keys_refuses_unsigned_models(controller, start_agent, model_dir):
    from protocol.signing import Signer

    key = Signer.generate().public_key_b64
    start_agent("dev1", config=f'trusted_keys = ["{key}"]\n', wait_online=controller)
    record = deploy(controller, mlp(model_dir / "unsigned.onnx", seed=55))
    entry = wait_model_state(controller, "dev1", "m", record["sha256"], {"failed"})
    assert entry["reason"]["code"] == "signature_invalid" and "not signed" in entry["reason"]["message"]
