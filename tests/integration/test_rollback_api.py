"""Rollback on demand: the API and `edgectl rollback` against a real agent."""

from __future__ import annotations

import json

import httpx
from conftest import wait_model_state
from test_e2e import edgectl


def test_rollback_to_previous_and_to_a_version(controller, start_agent, mlp_model, mlp_model_v2, model_dir):
    from edgectl.sample_models import mlp

    agent = start_agent("dev1", wait_online=controller)
    c = controller.client
    v1 = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})

    # nothing before v1: a clear 409
    r = httpx.post(f"{controller.url}/api/v1/devices/dev1/rollback", json={})
    assert r.status_code == 409 and "no previous version" in r.json()["error"]["message"]

    v2 = c.upload_model(mlp_model_v2, "mlp", None)
    c.deploy("mlp", v2["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"serving"})

    result = edgectl(controller.url, "rollback", "dev1", "--wait", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "to version 1" in result.stdout and "serving" in result.stdout
    entry = wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
    assert entry["serving"]["version"] == "1" and entry["previous"]["version"] == "2"
    assert agent.metadata("mlp")["versions"] == ["1"]
    assert [(m.version) for m, _ in controller.bg.controller.db.desired_models("dev1")] == ["1"]

    # an explicit version, with --json
    v3 = c.upload_model(mlp(model_dir / "mlp-v3.onnx", seed=3), "mlp", None)
    result = edgectl(controller.url, "rollback", "dev1", "--model", "mlp", "--to", v3["version"], "--wait", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["rollback"]["version"] == "3" and data["rollback"]["from"] == "1"
    assert data["devices"]["dev1"]["state"] == "serving"
    assert agent.metadata("mlp")["versions"] == ["3"]

    # errors: unregistered version, unknown model, unknown device
    r = httpx.post(f"{controller.url}/api/v1/devices/dev1/rollback", json={"to": "99"})
    said = r.json()["error"]["message"]  # the versions as an operator types them, not a Python list
    assert r.status_code == 404 and "version '99' is not registered; registered: 1, 2, 3" in said, said
    r = httpx.post(f"{controller.url}/api/v1/devices/dev1/rollback", json={"model": "other"})
    assert r.status_code == 404 and "no model 'other'" in r.json()["error"]["message"]
    bad = edgectl(controller.url, "rollback", "ghost")
    assert bad.returncode == 1 and "unknown device 'ghost'; known devices: dev1" in bad.stderr, bad.stderr


def test_rollback_needs_model_when_several(controller, start_agent, mlp_model, model_dir):
    from edgectl.sample_models import mlp

    start_agent("dev1", wait_online=controller)
    c = controller.client
    a = c.upload_model(mlp_model, "a", None)
    b = c.upload_model(mlp(model_dir / "b.onnx", seed=7), "b", None)
    c.deploy("a", a["version"], ["dev1"])
    c.deploy("b", b["version"], ["dev1"])
    wait_model_state(controller, "dev1", "b", b["sha256"], {"serving"})
    r = httpx.post(f"{controller.url}/api/v1/devices/dev1/rollback")
    assert r.status_code == 400
    assert "['a', 'b']" in r.json()["error"]["message"] and "--model" in r.json()["error"]["message"]
    # an explicit version of one of them works, and the other is left alone
    a2 = c.upload_model(mlp(model_dir / "a2.onnx", seed=8), "a", None)
    result = edgectl(controller.url, "rollback", "dev1", "-m", "a", "--to", a2["version"], "--wait")
    assert result.returncode == 0, result.stderr
    desired = {m.name: m.version for m, _ in controller.bg.controller.db.desired_models("dev1")}
    assert desired == {"a": "2", "b": "1"}


def test_rollback_wait_reports_failure(controller, start_agent, mlp_model, mlp_model_v2):
    """A rollback target that cannot be served exits non-zero with the reason, like push --wait."""
    start_agent("dev1", wait_online=controller)
    c = controller.client
    v1 = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
    v2 = c.upload_model(mlp_model_v2, "mlp", None)
    stored = controller.bg.controller.artifacts.path(v2["sha256"])
    stored.write_bytes(stored.read_bytes()[::-1])  # corrupt: the device refuses it
    controller.bg.controller.artifacts.compressed_path(v2["sha256"]).unlink(missing_ok=True)  # raw bytes travel
    result = edgectl(controller.url, "rollback", "dev1", "--to", v2["version"], "--wait", "--timeout", "30")
    assert result.returncode == 1
    assert "dev1" in result.stderr and "sha256" in result.stderr
