"""The crash-loop breaker: a runtime that kills the agent natively (SIGSEGV) while a new version serves, or while the
agent loads it, makes the next start refuse that version and serve the one before, instead of crashing again.

The crash is real: a sitecustomize on the agent's PYTHONPATH makes ONNX Runtime's session read address 0 (a
segmentation fault) in the agent's own process for one model, as a broken runtime or driver would."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import model_state, wait_model_state, wait_until
from onnx import TensorProto, helper, numpy_helper

from edgectl.sample_models import _graph_model, _save, mlp

CRASHING_RUNTIME = """
import ctypes, sys
import onnxruntime

_run, _init = onnxruntime.InferenceSession.run, onnxruntime.InferenceSession.__init__

def _marked(session, name):
    return any(o.name == name for o in session.get_outputs())

def run(self, output_names, input_feed, *args, **kwargs):
    if _marked(self, "crash_me") and any(abs(a).max() > 1000 for a in input_feed.values()):
        ctypes.string_at(0)  # a real segmentation fault, in this very thread
    return _run(self, output_names, input_feed, *args, **kwargs)

def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if _marked(self, "crash_on_load") and not getattr(sys, "_edge_trial_worker", False):
        ctypes.string_at(0)

onnxruntime.InferenceSession.run, onnxruntime.InferenceSession.__init__ = run, init
"""


def marked_model(path, output: str):
    w = numpy_helper.from_array((np.random.default_rng(9).standard_normal((16, 4)) / 4).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], [output])],
        "marked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    return _save(_graph_model(graph), path)


def post(agent, value: float) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [value] * 16}]}
    return httpx.post(f"{agent.api}/v2/models/m/infer", json=body, timeout=10)


@pytest.fixture
def crashing_runtime(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHING_RUNTIME)
    monkeypatch.setenv("PYTHONPATH", str(site))


def deploy(controller, path):
    record = controller.client.upload_model(path, "m", None)
    controller.client.deploy("m", record["version"], ["dev1"])
    return record


def test_a_version_that_kills_the_agent_while_serving_is_rolled_back_after_two_restarts(
    controller, start_agent, model_dir, tmp_path, crashing_runtime
):
    agent = start_agent("dev1", config="health_window_s = 300\n", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "cl1.onnx", seed=91))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    v2 = deploy(controller, marked_model(tmp_path / "crashes.onnx", "crash_me"))
    wait_model_state(controller, "dev1", "m", v2["sha256"], {"serving"})

    for restart in (1, 2):
        with pytest.raises(httpx.HTTPError):
            post(agent, 5000.0)  # the runtime kills the agent on this request
        assert agent.proc.wait(10) != 0
        agent.start()  # what systemd's Restart= does
        want = v2["version"] if restart == 1 else v1["version"]
        wait_until(lambda w=want: (m := agent.metadata("m")) and m["versions"] == [w], 60, f"serving {want}")

    assert post(agent, 5000.0).status_code == 200  # version 1 answers what version 2 died on
    wait_until(lambda: controller.device("dev1")["online"], 20, "dev1 online")
    entry = wait_until(lambda: (e := model_state(controller, "dev1", "m")) and e["state"] == "failed" and e, 30, "x")
    reason = entry["reason"]
    assert reason["code"] == "crashed" and "Segmentation fault" in reason["message"], reason
    assert "(backend onnxruntime)" in reason["message"] and "while serving it (2 times)" in reason["message"]
    assert entry["serving"]["version"] == v1["version"]
    assert len(reason["message"].splitlines()) == 1


def test_a_version_that_kills_the_agent_while_it_loads_is_refused_at_the_next_start(
    controller, start_agent, model_dir, tmp_path, crashing_runtime
):
    agent = start_agent("dev1", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "cl2.onnx", seed=92))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    bad = deploy(controller, marked_model(tmp_path / "crash-on-load.onnx", "crash_on_load"))
    assert agent.proc.wait(60) != 0  # the trial passed in its worker; the agent's own load killed it
    agent.start()
    entry = wait_model_state(controller, "dev1", "m", bad["sha256"], {"failed"}, timeout=60)
    assert entry["reason"]["code"] == "crashed" and "while loading it" in entry["reason"]["message"]
    assert "Segmentation fault" in entry["reason"]["message"] and entry["serving"]["version"] == v1["version"]
    assert post(agent, 1.0).json()["model_version"] == v1["version"]
