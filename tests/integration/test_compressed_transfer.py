"""Compressed transfer: an artifact that zstd makes smaller travels compressed, the agent decompresses while it
verifies, resumes a compressed download after a kill, and falls back to raw bytes when no compressed copy is left."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import onnx
import paho.mqtt.client as mqtt
import pytest
from conftest import wait_model_state, wait_until
from onnx import numpy_helper
from paho.mqtt.enums import CallbackAPIVersion

from edgectl.sample_models import mlp
from protocol import DEFAULT_CHUNK_BYTES, Topics

zstandard = pytest.importorskip("zstandard")


def sparse_mlp(path, pad_mb: float, keep: float = 0.1, seed: int = 0):
    """An MLP whose large weight is magnitude-pruned to `keep` of its entries: what `pruned` variants look like."""
    model = onnx.load(mlp(path, pad_mb=pad_mb, seed=seed))
    for init in model.graph.initializer:
        if init.name == "w1":
            w = numpy_helper.to_array(init).copy()
            w[np.abs(w) < np.quantile(np.abs(w), 1 - keep)] = 0
            init.CopyFrom(numpy_helper.from_array(w, "w1"))
    onnx.save(model, path)
    return path


class RequestSpy:
    """Listens on the device's artifact request topic, as the broker delivers them: which encodings were asked for."""

    def __init__(self, broker, prefix: str, device_id: str) -> None:
        self.encodings: list[str] = []
        self.offsets: set[int] = set()
        self._subscribed = threading.Event()
        host, port = broker.url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spy-{device_id}")
        self.client.on_message = lambda c, u, msg: self._seen(json.loads(msg.payload))
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, int(port))
        self.client.subscribe(Topics(prefix).device(device_id, "artifact/request"), 1)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _seen(self, request: dict) -> None:
        self.encodings.append(request.get("encoding", "identity"))
        self.offsets.add(request["offset"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_pruned_model_travels_compressed(controller, start_agent, broker, prefix, model_dir):
    model = sparse_mlp(model_dir / "sparse.onnx", pad_mb=4)
    raw_size = model.stat().st_size
    agent = start_agent("dev1", wait_online=controller)
    spy = RequestSpy(broker, prefix, "dev1")
    try:
        record = controller.client.upload_model(model, "sparse", None)
        offer = controller.bg.controller.artifacts.transfer(record["sha256"])
        assert offer is not None and offer.size < 0.5 * raw_size  # 90% zeros
        controller.client.deploy("sparse", record["version"], ["dev1"])
        wait_model_state(controller, "dev1", "sparse", record["sha256"], {"serving"})
    finally:
        spy.close()
    assert spy.encodings and set(spy.encodings) == {"zstd"}
    # chunks cover the compressed size, not the raw one
    assert spy.offsets == set(range(0, offer.size, DEFAULT_CHUNK_BYTES))
    stored = agent.data_dir / "store" / "objects" / record["sha256"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record["sha256"]
    assert list((agent.data_dir / "store" / "partial").iterdir()) == []


def lookup_table(path, size: int = 2 << 20):
    """A model that is all random bytes (a uint8 lookup table): nothing for zstd to squeeze."""
    from onnx import TensorProto, helper

    table = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "x"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n"])],
        [numpy_helper.from_array(table, "table")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_incompressible_model_travels_raw(controller, start_agent, broker, prefix, model_dir):
    model = lookup_table(model_dir / "table.onnx")
    start_agent("dev1", wait_online=controller)
    spy = RequestSpy(broker, prefix, "dev1")
    try:
        record = controller.client.upload_model(model, "dense", None)
        assert controller.bg.controller.artifacts.transfer(record["sha256"]) is None
        controller.client.deploy("dense", record["version"], ["dev1"])
        wait_model_state(controller, "dev1", "dense", record["sha256"], {"serving"})
    finally:
        spy.close()
    assert spy.encodings and set(spy.encodings) == {"identity"}


def test_compressed_download_resumes_after_kill(controller, start_agent, model_dir):
    model = sparse_mlp(model_dir / "sparse-big.onnx", pad_mb=48, keep=0.3, seed=3)
    config = "chunk_bytes = 16384\ndownload_window = 1\n"  # many small round trips: a kill lands mid-transfer
    agent = start_agent("dev1", config=config, wait_online=controller)
    record = controller.client.upload_model(model, "big", None)
    offer = controller.bg.controller.artifacts.transfer(record["sha256"])
    assert offer is not None
    controller.client.deploy("big", record["version"], ["dev1"])
    part = agent.data_dir / "store" / "partial" / f"{record['sha256']}.zst.part"
    wait_until(lambda: part.exists() and 1 << 20 < part.stat().st_size < offer.size // 2, 60, "download under way")
    agent.kill()
    assert 0 < part.stat().st_size < offer.size

    agent.start()
    wait_model_state(controller, "dev1", "big", record["sha256"], {"serving"}, timeout=120)
    assert "resuming download of" in agent.logs() and "(zstd)" in agent.logs()
    stored = agent.data_dir / "store" / "objects" / record["sha256"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record["sha256"]
    assert not part.exists()


def test_falls_back_to_raw_when_the_compressed_copy_is_gone(controller, start_agent, broker, prefix, model_dir):
    model = sparse_mlp(model_dir / "sparse2.onnx", pad_mb=2, seed=5)
    agent = start_agent("dev1", wait_online=controller)
    agent.kill()  # the desired state offering zstd waits for it, retained
    record = controller.client.upload_model(model, "sparse", None)
    artifacts = controller.bg.controller.artifacts
    assert artifacts.transfer(record["sha256"]) is not None
    controller.client.deploy("sparse", record["version"], ["dev1"])
    artifacts.compressed_path(record["sha256"]).unlink()  # gone after the desired state offered it
    spy = RequestSpy(broker, prefix, "dev1")
    try:
        agent.start()
        wait_model_state(controller, "dev1", "sparse", record["sha256"], {"serving"})
    finally:
        spy.close()
    first_raw = spy.encodings.index("identity")
    assert first_raw > 0 and set(spy.encodings[:first_raw]) == {"zstd"}  # asked for zstd, refused, went raw
    assert "fetching it raw" in agent.logs()


def test_tampered_compressed_copy_is_rejected(controller, start_agent, model_dir):
    """The hash that counts is the raw artifact's: a compressed copy that decompresses to other bytes is refused."""
    agent = start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(sparse_mlp(model_dir / "t1.onnx", pad_mb=1, seed=7), "m", None)
    controller.client.deploy("m", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    v2 = controller.client.upload_model(sparse_mlp(model_dir / "t2.onnx", pad_mb=1, seed=8), "m", None)
    artifacts = controller.bg.controller.artifacts
    raw = bytearray(artifacts.path(v2["sha256"]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    artifacts.compressed_path(v2["sha256"]).write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
    controller.client.deploy("m", v2["version"], ["dev1"])
    entry = wait_model_state(controller, "dev1", "m", v2["sha256"], {"failed"})
    assert entry["reason"]["code"] == "hash_mismatch" and entry["serving"]["sha256"] == v1["sha256"]
    assert not (agent.data_dir / "store" / "objects" / v2["sha256"]).exists()


def test_compressed_copy_of_another_size_is_a_clear_failure(controller, start_agent, model_dir):
    """The desired state announced one compressed size, the controller now holds another: the deployment fails with
    the sizes named (it does not wait forever for bytes that never come), and the previous version keeps serving."""
    agent = start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(sparse_mlp(model_dir / "s1.onnx", pad_mb=1, seed=11), "m", None)
    controller.client.deploy("m", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    agent.kill()
    v2 = controller.client.upload_model(sparse_mlp(model_dir / "s2.onnx", pad_mb=1, seed=12), "m", None)
    controller.client.deploy("m", v2["version"], ["dev1"])
    packed = controller.bg.controller.artifacts.compressed_path(v2["sha256"])
    packed.write_bytes(packed.read_bytes() + b"\0" * 4096)  # after the desired state announced its size
    agent.start()
    entry = wait_model_state(controller, "dev1", "m", v2["sha256"], {"failed"})
    assert "desired state announced" in entry["reason"]["message"]
    assert entry["serving"]["sha256"] == v1["sha256"]
