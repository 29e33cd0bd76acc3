"""The walking skeleton end to end: edgectl -> controller -> MQTT -> agent -> v2 API, with real processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import model_state, wait_model_state, wait_until


def edgectl(controller_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECTL_CONTROLLER": controller_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def v2_infer(agent, model: str, x: np.ndarray) -> dict:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(f"{agent.api}/v2/models/{model}/infer", json=body, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_push_wait_serve_and_infer(controller, start_agent, mlp_model, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    result = edgectl(controller.url, "push", str(mlp_model), "-n", "mlp", "--to", "dev1", "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "serving" in result.stdout

    devices = json.loads(edgectl(controller.url, "devices", "--json").stdout)
    (device,) = devices
    assert device["id"] == "dev1" and device["online"] is True
    assert device["hardware"]["cores"] >= 1 and "onnxruntime" in device["hardware"]["runtimes"]
    (entry,) = device["models"]
    sha = hashlib.sha256(mlp_model.read_bytes()).hexdigest()
    assert {k: entry[k] for k in ("name", "version", "sha256", "state")} == {
        "name": "mlp", "version": "1", "sha256": sha, "state": "serving"
    }  # fmt: skip
    assert entry["backend"].startswith("onnxruntime")

    # the local v2 API answers what a bare ONNX Runtime session answers
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(mlp_model)).run(None, {"x": x})[0]
    out = v2_infer(agent, "mlp", x)["outputs"][0]
    assert out["shape"] == [3, 4]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(3, 4), expected, rtol=1e-5)

    # remote inference over MQTT request/response
    np.save(tmp_path / "x.npy", x)
    remote = edgectl(controller.url, "infer", "dev1", "--model", "mlp", "--input", str(tmp_path / "x.npy"), "--json")
    assert remote.returncode == 0, remote.stderr
    data = json.loads(remote.stdout)
    np.testing.assert_allclose(np.asarray(data["outputs"]["probs"]["data"]), expected, rtol=1e-5)

    status = json.loads(edgectl(controller.url, "status", "dev1", "--json").stdout)
    assert status["models"][0]["serving"]["sha256"] == sha
    models = json.loads(edgectl(controller.url, "models", "--json").stdout)
    assert [(m["name"], m["version"], m["format"]) for m in models] == [("mlp", "1", "onnx")]


def test_new_version_swaps_and_old_is_kept_as_previous(controller, start_agent, mlp_model, mlp_model_v2):
    agent = start_agent("dev1", wait_online=controller)
    c = controller.client
    v1 = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
    v2 = c.upload_model(mlp_model_v2, "mlp", None)
    c.deploy("mlp", v2["version"], ["dev1"])
    entry = wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"serving"})
    assert entry["previous"]["sha256"] == v1["sha256"]
    assert agent.metadata("mlp")["versions"] == [v2["version"]]
    objects = sorted(p.name for p in (agent.data_dir / "store" / "objects").iterdir())
    assert objects == sorted([v1["sha256"], v2["sha256"]])


def test_wrong_sha256_is_rejected_and_previous_keeps_serving(controller, start_agent, mlp_model, mlp_model_v2):
    agent = start_agent("dev1", wait_online=controller)
    c = controller.client
    v1 = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})

    v2 = c.upload_model(mlp_model_v2, "mlp", None)
    stored = controller.bg.controller.artifacts.path(v2["sha256"])
    corrupted = bytearray(stored.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size, different bytes: only the hash can tell
    stored.write_bytes(bytes(corrupted))
    controller.bg.controller.artifacts.compressed_path(v2["sha256"]).unlink(missing_ok=True)  # raw bytes travel
    c.deploy("mlp", v2["version"], ["dev1"])

    entry = wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"failed"})
    assert entry["reason"]["code"] == "hash_mismatch"
    assert "sha256 mismatch" in entry["reason"]["message"]
    assert entry["serving"]["sha256"] == v1["sha256"]
    assert agent.metadata("mlp")["versions"] == [v1["version"]]
    v2_infer(agent, "mlp", np.zeros((1, 16), np.float32))
    assert not (agent.data_dir / "store" / "objects" / v2["sha256"]).exists()


def test_agent_killed_mid_download_resumes(controller, start_agent, model_dir):
    from edgectl.sample_models import mlp

    big = mlp(model_dir / "big.onnx", pad_mb=24)
    config = "chunk_bytes = 16384\ndownload_window = 1\n"  # many small round trips: a kill lands mid-transfer
    agent = start_agent("dev1", config=config, wait_online=controller)
    record = controller.client.upload_model(big, "big", None)
    controller.client.deploy("big", record["version"], ["dev1"])
    part = agent.data_dir / "store" / "partial" / f"{record['sha256']}.part"
    size = big.stat().st_size
    wait_until(lambda: part.exists() and 2 << 20 < part.stat().st_size < size // 2, 60, "download to be under way")
    agent.kill()
    kept = part.stat().st_size
    assert 0 < kept < size

    agent.start()
    wait_model_state(controller, "dev1", "big", record["sha256"], {"serving"}, timeout=120)
    assert "resuming download" in agent.logs()
    resumed_at = int(agent.logs().split("resuming download of")[1].split(" at ")[1].split(" ")[0])
    assert resumed_at > 0
    stored = agent.data_dir / "store" / "objects" / record["sha256"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record["sha256"]
    assert not part.exists()


def test_controller_restart_keeps_registry_and_deployments(controller, start_agent, mlp_model, mlp_model_v2):
    start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})

    controller.stop()
    controller.start()
    assert [m["sha256"] for m in controller.client.models()] == [v1["sha256"]]
    wait_until(lambda: controller.device("dev1")["online"], 20, "dev1 online after restart")
    desired = controller.bg.controller.db.desired_models("dev1")
    assert [(m.name, m.version) for m, _ in desired] == [("mlp", v1["version"])]
    # and it still deploys
    v2 = controller.client.upload_model(mlp_model_v2, "mlp", None)
    assert v2["version"] == "2"
    controller.client.deploy("mlp", v2["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"serving"})


def test_agent_restart_serves_from_disk_without_controller(controller, start_agent, mlp_model):
    agent = start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
    controller.stop()
    agent.stop()
    agent.args[agent.args.index("--broker") + 1] = "mqtt://127.0.0.1:9"  # nothing listens there
    agent.start()
    wait_until(lambda: agent.metadata("mlp"), 20, "the agent to serve from disk")
    v2_infer(agent, "mlp", np.ones((2, 16), np.float32))


def test_retention_keeps_serving_and_previous(controller, start_agent, model_dir):
    from edgectl.sample_models import mlp

    agent = start_agent("dev1", config="keep_versions = 2\n", wait_online=controller)
    shas = []
    for seed in range(4):
        record = controller.client.upload_model(mlp(model_dir / f"r{seed}.onnx", seed=10 + seed), "ret", None)
        controller.client.deploy("ret", record["version"], ["dev1"])
        wait_model_state(controller, "dev1", "ret", record["sha256"], {"serving"})
        shas.append(record["sha256"])
    objects_dir = agent.data_dir / "store" / "objects"

    def stored() -> set[str]:
        return {p.name for p in objects_dir.iterdir()}

    # garbage collection runs right after the swap is reported, so give it a moment before comparing
    wait_until(lambda: stored() == set(shas[-2:]), 10, "only the last two versions to remain in the store")


def test_push_to_unknown_device_is_a_clear_error(controller, mlp_model):
    result = edgectl(controller.url, "push", str(mlp_model), "--name", "mlp", "--to", "ghost")
    assert result.returncode != 0
    assert "unknown device 'ghost'" in result.stderr
    assert controller.client.models() == []  # nothing uploaded


@pytest.mark.parametrize(
    "args, message",
    [
        (["push", "/nonexistent/model.onnx", "--name", "m"], "cannot read model file"),
        (["status", "nope"], "unknown device"),
        (["infer", "nope", "--model", "m", "--input", "/nonexistent.npy"], "unknown device"),
    ],
)
def test_cli_errors_are_one_line(controller, args, message):
    result = edgectl(controller.url, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_controller_down_is_a_clear_error():
    result = edgectl("http://127.0.0.1:9", "devices")
    assert result.returncode == 1
    assert "cannot reach the controller" in result.stderr


def test_malformed_model_is_refused(controller, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    result = edgectl(controller.url, "push", str(bad), "--name", "bad")
    assert result.returncode == 1
    assert "not a valid ONNX model" in result.stderr


def test_deploy_failure_reports_reason_and_wait_exits_nonzero(controller, start_agent, mlp_model):
    start_agent("dev1", config='backend = "no-such-backend"\n', wait_online=controller)
    result = edgectl(controller.url, "push", str(mlp_model), "-n", "mlp", "--to", "dev1", "--wait", "--timeout", "30")
    assert result.returncode == 1
    assert "dev1" in result.stderr and "unknown backend" in result.stderr
    assert model_state(controller, "dev1", "mlp")["state"] == "failed"
