"""Issue 26, finding 7: a backend pinned by the operator (`edgectl push --backend onnxruntime`) skipped the isolated
trial, so a model whose runtime segfaults on load killed the agent. The crash is real: a sitecustomize on the agent's
PYTHONPATH makes ONNX Runtime read address 0 when it opens the marked model, in every process (the trial worker
too), as a broken runtime or driver would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import model_state, wait_model_state
from test_crash_loop import deploy, marked_model, post

from edgectl.sample_models import mlp

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
