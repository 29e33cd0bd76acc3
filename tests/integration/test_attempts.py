"""A version that failed on a device is tried again only when the operator asks (push --retry, rollback --to), and
--wait follows that new attempt instead of reporting the old failure at once."""

from __future__ import annotations

import pytest
from conftest import model_state, wait_model_state
from test_rollback import always_nan, deploy

from edgectl.client import ApiError
from edgectl.sample_models import mlp
from edgectl.watch import wait_serving


def failures_logged(agent, name: str = "m") -> int:
    return agent.log.read_text().count(f"deployment of {name} ")


def test_a_failed_version_is_tried_again_only_on_request(controller, start_agent, model_dir, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    v1 = deploy(controller, mlp(model_dir / "at1.onnx", seed=61))
    wait_model_state(controller, "dev1", "m", v1["sha256"], {"serving"})
    nan = deploy(controller, always_nan(tmp_path / "nan.onnx"))
    first = wait_model_state(controller, "dev1", "m", nan["sha256"], {"failed"})
    assert first["reason"]["code"] == "nonfinite_output" and first["attempt"] > 0
    assert failures_logged(agent) == 1

    # another change of the desired state does not try it again
    other = controller.client.upload_model(mlp(model_dir / "at2.onnx", seed=62), "other", None)
    controller.client.deploy("other", other["version"], ["dev1"])
    wait_model_state(controller, "dev1", "other", other["sha256"], {"serving"})
    entry = model_state(controller, "dev1", "m")
    assert entry["state"] == "failed" and entry["attempt"] == first["attempt"]
    assert failures_logged(agent) == 1

    # deploying it again as it is: refused in one line that names the cause and the way out
    with pytest.raises(ApiError) as refused:
        controller.client.deploy("m", nan["version"], ["dev1"])
    assert refused.value.code == "failed_before" and "--retry" in str(refused.value)
    assert "\n" not in str(refused.value) and "NaN/Inf" in str(refused.value)

    # --retry: a new attempt; waiting on it does not stop at the old failure
    again = controller.client.deploy("m", nan["version"], ["dev1"], retry=True)
    attempt = again["deployments"][0]["attempt"]
    assert attempt > first["attempt"]
    outcome = wait_serving(controller.client, ["dev1"], "m", nan["sha256"], 60, attempts={"dev1": attempt})["dev1"]
    assert outcome.state == "failed" and "NaN/Inf" in (outcome.reason or "")
    assert model_state(controller, "dev1", "m")["attempt"] == attempt
    assert failures_logged(agent) == 2

    # rollback --to names the version: a new attempt as well
    back = controller.client.rollback("dev1", "m", to=nan["version"])
    assert back["attempt"] > attempt
    outcome = wait_serving(controller.client, ["dev1"], "m", nan["sha256"], 60, attempts={"dev1": back["attempt"]})
    assert outcome["dev1"].state == "failed" and failures_logged(agent) == 3
    assert agent.metadata("m")["versions"] == [v1["version"]]  # version 1 served throughout
