"""`edgectl status` says why a device runs a model where it does: the trial's candidates, and run-time failover."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
from conftest import wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_e2e import edgectl

from edgectl.choice_view import reason_text
from protocol import DeviceState, ModelStatus, Presence, ServingInfo, Topics


def test_status_shows_backend_choice_and_candidates(controller, start_agent, mlp_model):
    start_agent("dev1", wait_online=controller)
    record = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})

    (model,) = json.loads(edgectl(controller.url, "status", "dev1", "--json").stdout)["models"]
    selection = model["selection"]
    assert selection["backend"] == model["backend"] and selection["reason"]
    timed = [c for c in selection["candidates"] if c["p50_ms"] is not None]
    assert timed and any(c["name"] == selection["backend"] for c in timed)

    text = edgectl(controller.url, "status", "dev1").stdout
    reason = reason_text(selection["backend"], selection["reason"])  # without the backend's name a second time
    assert f"mlp@1 backend {selection['backend']}: {reason}" in " ".join(text.split())
    for c in selection["candidates"]:
        assert c["name"] in text
    assert "chosen" in text


def publish(broker, topic: str, payload: bytes) -> None:
    host, port = broker.url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-failover-box")
    client.connect(host, int(port))
    client.loop_start()
    client.publish(topic, payload, 1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_status_shows_failover(controller, broker, prefix):
    """A device whose accelerator failed reports it in its state; the controller and edgectl carry it through."""
    topics = Topics(prefix)
    publish(broker, topics.device("jetson1", "presence"), Presence(device_id="jetson1", online=True).encode())
    serving = ServingInfo(version="3", sha256="a" * 64, backend="onnxruntime:cuda")
    failover = {
        "active": "onnxruntime:cuda",
        "preferred": "onnxruntime:tensorrt",
        "failed_over": True,
        "failovers": 1,
        "reason": "onnxruntime:tensorrt: CUDA error 999",
        "since": 0.0,
    }
    state = DeviceState(
        device_id="jetson1",
        models=[ModelStatus(name="det", version="3", sha256="a" * 64, state="serving", serving=serving,
                            backend="onnxruntime:cuda", failover=failover)],
    )  # fmt: skip
    publish(broker, topics.device("jetson1", "state"), state.encode())
    wait_until(lambda: controller.device("jetson1")["models"], 10, "jetson1's state to arrive")

    (model,) = controller.device("jetson1")["models"]
    assert model["failover"]["failed_over"] and model["failover"]["preferred"] == "onnxruntime:tensorrt"
    text = " ".join(edgectl(controller.url, "status", "jetson1").stdout.split())
    assert "FAILOVER det@3: serving on onnxruntime:cuda instead of onnxruntime:tensorrt" in text
    assert "CUDA error 999" in text
