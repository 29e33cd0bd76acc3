"""Issue 26, finding 7: a backend pinned by the operator (`edgectl push --backend onnxruntime`) skipped the isolated
trial, so a model whose runtime segfaults on load killed the agent. The crash is real: a sitecustomize on the agent's
PYTHONPATH makes ONNX Runtime read address 0 when it opens the marked model, in every process (the trial worker
too), as a broken runtime or driver would."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pytest
from conftest import model_state, wait_model_state
from test_crash_loop import deploy, marked_model, post
from test_http_models import Origin
from test_signing_e2e import publish_retained

from edgectl.sample_models import mlp
from protocol import Desired, DesiredModel, Topics

CRASHES_ON_LOAD = """
import ctypes
import onnxruntime

_init = onnxruntime.InferenceSession.__init__

def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if any(o.name == "crash_on_load" for o in self.get_outputs()):
        ctypes.string_at(0)  # a real segmentation fault

onnxruntime.InferenceSession.__init__ = init
"""


@pytest.fixture
def crashing_runtime(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHES_ON_LOAD)
    monkeypatch.setenv("PYTHONPATH", str(site))


def test_a_pinned_backend_that_segfaults_on_load_fails_the_version_not_the_agent(
    controller, start_agent, model_dir, tmp_path, crashing_runtime
):
    agent = start_agent("dev1", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "pin1.onnx", seed=93))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    bad = controller.client.upload_model(marked_model(tmp_path / "crash.onnx", "crash_on_load"), "m", None)
    controller.client.deploy("m", bad["version"], ["dev1"], backend="onnxruntime")
    served, deadline, entry = [], time.monotonic() + 60, None  # the push's --wait
    while time.monotonic() < deadline:
        assert agent.proc.poll() is None, agent.logs()[-2000:]  # alive throughout
        served.append(post(agent, 1.0).json()["model_version"])
        entry = model_state(controller, "dev1", "m")
        if entry and entry["sha256"] == bad["sha256"] and entry["state"] == "failed":
            break
        time.sleep(0.2)
    assert entry is not None and entry["state"] == "failed", entry
    message = entry["reason"]["message"]
    print(f"{len(served)} requests served by {set(served)} while the pinned version failed: {message}")
    assert "SIGSEGV" in message and "onnxruntime" in message and len(message.splitlines()) == 1
    assert set(served) == {v1["version"]} and entry["serving"]["version"] == v1["version"]
    assert agent.proc.poll() is None
    # the runtime really does kill a process that opens the model (what the agent did before)
    opens = f"import onnxruntime as o; o.InferenceSession({str(tmp_path / 'crash.onnx')!r})"
    assert subprocess.run([sys.executable, "-c", opens]).returncode == -signal.SIGSEGV


def varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def test_an_empty_group_no_longer_hides_external_data_from_the_agent(
    controller, start_agent, broker, prefix, model_dir, tmp_path
):
    """Finding 8: the agent's external-data walk stopped at a protobuf group (wire type 3, which protobuf parsers
    skip) and then let the model through to a runtime that may read the file it names (ONNX Runtime before its own
    path check). The controller's upload check would refuse such a model, so the attacker here is whoever can put a
    desired state on the broker (no signing key on this fleet) and an artifact on an HTTP server."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(mlp(model_dir / "ext-base.onnx", seed=94))
    tensor = model.graph.initializer[0]
    external_data_helper.set_external_data(tensor, location="w.bin", offset=0, length=64)
    tensor.ClearField("raw_data")
    data = varint((1000 << 3) | 3) + varint((1000 << 3) | 4) + model.SerializeToString()  # an empty group first
    assert onnx.load_from_string(data).graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "origin").mkdir()
    (tmp_path / "origin" / sha).write_bytes(data)
    origin = Origin(tmp_path / "origin")
    start_agent("dev1", wait_online=controller)
    try:
        entry = DesiredModel(name="m", version="x", sha256=sha, size=len(data), url=f"{origin.url}/{sha}")
        desired = Desired(device_id="dev1", generation=1, models=[entry])
        publish_retained(broker, Topics(prefix).device("dev1", "desired"), desired.encode())
        state = wait_model_state(controller, "dev1", "m", sha, {"failed", "serving"}, timeout=60)
    finally:
        origin.close()
    print(f"the agent: {state['state']} {state.get('reason')}")
    assert state["state"] == "failed" and state["reason"]["code"] == "external_data", state
