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
