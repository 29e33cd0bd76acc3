"""`edgectl undeploy` (and DELETE /api/v1/devices/{id}/models/{name}): the agent stops serving the model, deletes its
files and stops reporting it; a failed model can be removed too, and is then no longer retried."""

from __future__ import annotations

import json

import httpx
from conftest import model_state, wait_model_state, wait_until
from test_e2e import edgectl


def test_undeploy_removes_a_serving_and_a_failed_model(controller, start_agent, mlp_model, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})
    stored = agent.data_dir / "store" / "objects"
    assert any(p.name == record["sha256"] for p in stored.rglob("*"))

    from zoo.sklearn_models import custom_op_model

    custom_op_model(tmp_path / "custom.onnx")  # one FancyNorm node of a domain no runtime here has
    broken = c.upload_model(tmp_path / "custom.onnx", "broken", None)
    c.deploy("broken", broken["version"], ["dev1"])
    wait_model_state(controller, "dev1", "broken", broken["sha256"], {"failed"})
    gone = c.undeploy("dev1", "broken")
    assert gone["model"] == "broken"
    wait_until(lambda: model_state(controller, "dev1", "broken") is None, 10, "the failed model to be gone")

    done = edgectl(controller.url, "undeploy", "dev1", "--model", "mlp", "--wait", "--json", "--timeout", "30")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gone"] is True
    assert model_state(controller, "dev1", "mlp") is None
    assert httpx.get(f"{agent.api}/v2/models/mlp", timeout=5).status_code == 404
    wait_until(lambda: not any(p.name == record["sha256"] for p in stored.rglob("*")), 10, "the model's files to go")

    again = edgectl(controller.url, "undeploy", "dev1", "--model", "mlp")
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1
    assert "not deployed to dev1" in again.stderr
    unknown = edgectl(controller.url, "undeploy", "nope", "--model", "mlp")
    assert unknown.returncode != 0 and "unknown device" in unknown.stderr.lower()
