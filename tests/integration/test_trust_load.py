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


def field(number: int, wire: int, value: bytes | int, *, tag_bit32: bool = False) -> bytes:
    """One protobuf field; `tag_bit32` writes its tag as 5 bytes with bit 32 set (protobuf's C++ parser, ONNX
    Runtime's, reads a tag as 32 bits and takes it for the same field)."""
    tag = varint(((number << 3) | wire) | ((1 << 32) if tag_bit32 else 0))
    if wire == 0:
        assert isinstance(value, int)
        return tag + varint(value)
    assert isinstance(value, bytes)
    return tag + varint(len(value)) + value


def disguised(model, how: str) -> bytes:
    """`model` (its first initializer kept in w.bin) serialized so that a naive walk misses the
    external data while protobuf, and so ONNX Runtime, still reads it: an empty group ahead of the model's fields;
    data_location written after the external_data entries as 1 + 2**32 (an enum is kept as an int32: EXTERNAL);
    every external-data field under a tag with bit 32 set."""
    import onnx

    if how == "empty group":
        return varint((1000 << 3) | 3) + varint((1000 << 3) | 4) + model.SerializeToString()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tensor = model.graph.initializer.pop(0)
    entries = [e.SerializeToString() for e in tensor.external_data]
    tensor.ClearField("external_data")
    tensor.ClearField("data_location")
    raw = tensor.SerializeToString()
    if how == "enum over 32 bits":
        raw += b"".join(field(13, 2, e) for e in entries) + field(14, 0, 1 + (1 << 32))
    elif how == "tag over 32 bits":
        raw += b"".join(field(13, 2, e, tag_bit32=True) for e in entries) + field(14, 0, 1, tag_bit32=True)
    else:
        raise ValueError(how)
    graph = model.graph.SerializeToString() + field(5, 2, raw)
    model.ClearField("graph")
    return model.SerializeToString() + field(7, 2, graph)


DISGUISES = ("empty group", "enum over 32 bits", "tag over 32 bits")


def external_model(path):
    """An ONNX model whose first initializer is kept in w.bin (the file not written), and that initializer's bytes."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(mlp(path, seed=94))
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data
    external_data_helper.set_external_data(tensor, location="w.bin", offset=0, length=len(raw))
    tensor.ClearField("raw_data")
    return model, raw


@pytest.mark.parametrize("how", DISGUISES)
def test_each_disguise_is_external_data_to_onnx_runtime_and_refused_by_the_agents_check(tmp_path, how):
    """Finding 8's walk against what the runtime really reads: each disguise loads the tensor from w.bin in ONNX
    Runtime (a path outside the model's directory would be read alike by the 1.19-1.23 the agent admits, which
    check no path), and the agent's check refuses it. Before: the two 32-bit disguises walked clean (None)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from targets.onnx_external import ExternalData, refuse_external_data

    model, raw = external_model(tmp_path / "base.onnx")
    path = tmp_path / "m.onnx"
    path.write_bytes(disguised(model, how))
    if how != "tag over 32 bits":  # Python's protobuf (upb) refuses that tag; ONNX Runtime's C++ parser reads it
        parsed = {t.name: t for t in onnx.load_from_string(path.read_bytes()).graph.initializer}
        assert parsed[model.graph.initializer[0].name].data_location == onnx.TensorProto.EXTERNAL
    x = {model.graph.input[0].name: np.ones((1, 16), np.float32)}
    (tmp_path / "w.bin").write_bytes(raw)  # the weights ONNX Runtime reads from w.bin ...
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kept = session.run(None, x)[0]
    (tmp_path / "w.bin").write_bytes(bytes(len(raw)))  # ... and zeros there change its answer: it reads that file
    assert not np.array_equal(kept, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0])
    with pytest.raises(ExternalData, match="in another file") as refused:
        refuse_external_data(path)
    assert refused.value.code == "external_data"


@pytest.mark.parametrize("how", DISGUISES)
def test_external_data_hidden_from_a_naive_walk_is_refused_by_the_agent(
    controller, start_agent, broker, prefix, model_dir, tmp_path, how
):
    """Finding 8: the agent's external-data walk stopped at a protobuf group (wire type 3, which protobuf parsers
    skip) and then let the model through to a runtime that may read the file it names (ONNX Runtime before its own
    path check, 1.24); it also read tags and data_location as more than the 32 bits protobuf keeps. The controller's
    upload check would refuse such a model, so the attacker here is whoever can put a desired state on the broker
    (no signing key on this fleet) and an artifact on an HTTP server."""
    data = disguised(external_model(model_dir / f"ext-base-{DISGUISES.index(how)}.onnx")[0], how)
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
    print(f"{how}: the agent: {state['state']} {state.get('reason')}")
    assert state["state"] == "failed" and state["reason"]["code"] == "external_data", state
