"""On the device, a model's optimized variants compete with the original: each must agree with it on this device,
and the fastest that agrees serves (so a variant slower than the original here never does)."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgectl.sample_models import mlp
from protocol import Desired, DesiredModel, DeviceState, Topics, VariantRef, decode


def place(agent_dir, path) -> tuple[str, int]:
    """Put an artifact in the agent's store as if it had been downloaded (content-addressed by its sha256)."""
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    objects = agent_dir / "store" / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, objects / sha)
    return sha, len(data)


class StateWatcher:
    def __init__(self, broker, topic: str) -> None:
        self.state: DeviceState | None = None
        self.changed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        if message.payload:
            self.state = decode(DeviceState, message.payload)

    def model(self, name: str):
        return next((m for m in (self.state.models if self.state else []) if m.name == name), None)

    def close(self) -> None:
        self.client.loop_stop()


def test_fastest_agreeing_variant_serves(broker, prefix, start_agent, tmp_path):
    pytest.importorskip("onnxconverter_common")
    from converters import convert

    original = mlp(tmp_path / "orig.onnx", hidden=512, seed=61)
    fp16 = convert(original, "fp16", out_dir=tmp_path / "fp16")
    int8 = convert(original, "int8", out_dir=tmp_path / "int8")
    impostor = mlp(tmp_path / "impostor.onnx", hidden=512, seed=99)  # same signature, different weights
    assert fp16.ok and int8.ok

    agent_dir = tmp_path / "agent-dev1"
    orig_sha, orig_size = place(agent_dir, original)
    refs = []
    for name, path in (("fp16", fp16.path), ("int8", int8.path), ("int8-static", impostor)):
        sha, size = place(agent_dir, Path(path))
        refs.append(VariantRef(variant=name, sha256=sha, size=size))
    agent = start_agent("dev1")
    topics = Topics(prefix)
    watcher = StateWatcher(broker, topics.device("dev1", "state"))
    desired = Desired(
        device_id="dev1",
        generation=1,
        models=[DesiredModel(name="m", version="1", sha256=orig_sha, size=orig_size, variants=refs)],
    )
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    publisher.publish(topics.device("dev1", "desired"), desired.encode(), qos=1, retain=True).wait_for_publish(5)

    entry = wait_until(lambda: (m := watcher.model("m")) and m.state == "serving" and m, 60, "the model to serve")
    selection = entry.model_dump()["selection"]  # the JSON shape, whether the status types it or not
    results = {r["variant"]: r for r in selection["variants"]}
    assert set(results) == {"original", "fp16", "int8", "int8-static"}
    assert "disagrees with the original" in results["int8-static"]["error"]
    timed = {k: r for k, r in results.items() if not r.get("error")}
    finalists = {k: r["p50_ms"] for k, r in timed.items() if "runoff_p50_ms" in r}
    winner = min(finalists, key=finalists.get) if finalists else "original"
    for name, r in timed.items():  # the original, and each variant not clearly slower than it, met in the run-off
        close = name == "original" or r["vs_original"] <= 1.25
        assert (name in finalists) == (close and len(finalists) > 0), (name, r)
    assert (entry.serving.variant or "original") == winner
    assert entry.serving.sha256 == orig_sha and entry.sha256 == orig_sha  # identity stays the desired model's
    assert winner in selection["reason"]
    assert 0 < selection["variants_trial_s"] < 60

    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    import httpx
    import onnxruntime as ort

    body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    got = np.asarray(httpx.post(f"{agent.api}/v2/models/m/infer", json=body).json()["outputs"][0]["data"])
    want = ort.InferenceSession(str(original)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=0.02)

    agent.stop()  # from disk after a restart: the same variant, under the desired model's identity
    agent.start()
    wait_until(lambda: agent.metadata("m"), 20, "serving from disk")
    entry = wait_until(lambda: (m := watcher.model("m")) and m.state == "serving" and m, 30, "serving again")
    assert (entry.serving.variant or "original") == winner and entry.sha256 == orig_sha
    publisher.publish(topics.device("dev1", "desired"), b"", qos=1, retain=True).wait_for_publish(5)
    publisher.loop_stop()
    watcher.close()


def _padded(path: Path, extra: int) -> Path:
    """y = x @ w + 0 * sum(relu(x @ h)): the same answer whatever `extra` (h's width), which sets how long it takes."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["base"])]
    inits = [w]
    if extra:
        h = numpy_helper.from_array(rng.standard_normal((64, extra)).astype(np.float32), "h")
        zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
        inits += [h, zero]
        nodes += [
            helper.make_node("MatMul", ["x", "h"], ["wide"]),
            helper.make_node("Relu", ["wide"], ["act"]),
            helper.make_node("ReduceSum", ["act"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["base", "nothing"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["base"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _unrunnable(path: Path) -> Path:
    """x[4, 64] reshaped to [3, 5]: ONNX Runtime loads it and fails at every run."""
    from onnx import TensorProto, helper, numpy_helper, save

    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "unrunnable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [shape],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_contest_runs_off_the_close_ones_and_closes_the_rest(tmp_path):
    """A variant clearly slower than the original never reaches the run-off (it is closed at once); the original and
    every variant not slower than it do, however far behind the best; the winner is the run-off's fastest, and every
    other finalist is closed."""
    from agent.deploy.downloads import Artifact
    from agent.deploy.variants import Contest, Entrant
    from agent.serving.table import LoadedModel
    from protocol import Selection, VariantTrial
    from targets import registry
    from targets.inputs import synthesize

    def entrant(label: str, extra: int, model_file: Path | None = None) -> Entrant:
        backend = registry.create("onnxruntime")
        backend.load(model_file or _padded(tmp_path / f"{label}.onnx", extra), "onnx")
        probe = (synthesize(backend.inputs, 1, batch=1),)
        model = LoadedModel(label, "1", "0" * 64, backend, variant=None if label == "original" else label, probe=probe)
        result = VariantTrial(variant=label, backend="onnxruntime")
        return Entrant(model, Selection(), Artifact(label, "0" * 64, 0, "onnx"), result)

    original = entrant("original", 20_000)
    original.result.p50_ms = 1.0  # the standalone measure; the run-off replaces it
    contest = Contest(original)
    lean, heavy, trimmed = entrant("lean", 0), entrant("heavy", 200_000), entrant("trimmed", 12_000)
    contest.enter(heavy)
    contest.enter(lean)
    contest.enter(trimmed)
    broken = entrant("broken", 0, _unrunnable(tmp_path / "broken.onnx"))
    contest.enter(broken)  # loads, but fails at its first inference: left out, the contest goes on
    winner = contest.decide()

    results = {r.variant: r.model_dump() for r in contest.results}  # as the device status shows them
    assert winner is lean, contest.results
    assert heavy.result.vs_original > 2 and lean.result.vs_original < 0.5
    assert "runoff_p50_ms" not in results["heavy"]  # clearly slower than the original: closed at once
    assert results["original"]["runoff_p50_ms"] > results["lean"]["runoff_p50_ms"] > 0
    assert results["trimmed"]["runoff_p50_ms"] > 0  # far behind lean, but not slower than the original: it ran
    assert results["broken"]["error"].startswith("fails to run here") and "runoff_p50_ms" not in results["broken"]
    assert results["original"]["p50_ms"] == results["original"]["runoff_p50_ms"]  # every p50 on the run-off's scale
    assert results["heavy"]["p50_ms"] == pytest.approx(results["original"]["p50_ms"] * heavy.result.vs_original)
    inputs = {"x": np.ones((4, 64), np.float32)}
    for loser in (original, heavy, trimmed):
        with pytest.raises(Exception):  # noqa: B017 - closed: its session is gone
            loser.model.backend.infer(inputs)
    assert winner.model.backend.infer(inputs)["y"].shape == (4, 8)
