"""Malformed, oversized and misaddressed MQTT messages are logged and dropped; neither side stops working."""

from __future__ import annotations

import time

import numpy as np
import paho.mqtt.client as mqtt
from conftest import wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from protocol import ChunkHeader, Topics, encode_frame


def raw_client(broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


GARBAGE = [
    b"",
    b"not json",
    b"{",
    b"[]",
    b'{"v": 1}',
    b'{"v": 999, "device_id": "dev1", "online": true}',
    b'{"device_id": "../../etc", "online": "maybe"}',
    b"\xff\xfe\x00" * 100,
    b'{"v":1,"kind":"desired","device_id":"dev1","models":[{"name":"x","version":"1","sha256":"zz","size":-1}]}',
    b'{"v":1,"kind":"rpc_request","id":"1","reply_to":"elsewhere/topic","method":"infer","params":{}}',
    b'{"v":1,"kind":"rpc_request","id":"2","reply_to":"%s","method":"infer","params":{"model":"mlp","inputs":{"x":{"datatype":"FP32","shape":[1,16],"b64":"!!"}}}}',
    b'{"v":1,"kind":"artifact_request","request_id":"r","reply_to":"x","sha256":"'
    + b"0" * 64
    + b'","offset":0,"length":1}',
    b"x" * (3 << 20),  # over every JSON limit
]


def test_garbage_on_every_topic_is_dropped(broker, controller, start_agent, prefix, mlp_model, mlp_model_v2):
    agent = start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})

    topics = Topics(prefix)
    attacker = raw_client(broker)
    kinds = ["presence", "state", "desired", "artifact/request", "artifact/chunk", "rpc/request", "rpc/response"]
    for device in ("dev1", "ghost"):
        for kind in kinds:
            topic = topics.device(device, kind)
            for payload in GARBAGE:
                payload = payload.replace(b"%s", topics.device(device, "rpc/response").encode())
                attacker.publish(topic, payload, qos=1).wait_for_publish(5)
    # frames: bad magic, truncated header, lying length, chunk for an unknown artifact
    chunk_topic = topics.device("dev1", "artifact/chunk")
    header = ChunkHeader(request_id="x", sha256="1" * 64, offset=0, length=10, total=10)
    for frame in (b"XX\x01\x00\x00\x00\x05{}", encode_frame(header, b"short"), encode_frame(header, b"0123456789")):
        attacker.publish(chunk_topic, frame, qos=1).wait_for_publish(5)
    attacker.publish(topics.device("dev1", "presence"), b"", qos=1, retain=True).wait_for_publish(5)
    time.sleep(1.0)

    # both sides still work: the agent serves, and a new version deploys end to end
    assert agent.proc.poll() is None, agent.logs()
    wait_until(lambda: agent.metadata("mlp"), 5, "agent API")
    v2 = controller.client.upload_model(mlp_model_v2, "mlp", None)
    controller.client.deploy("mlp", v2["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"serving"})
    from protocol.tensors import encode_tensor

    x = {"x": encode_tensor(np.zeros((1, 16), np.float32))}
    assert controller.client.infer("dev1", "mlp", x)["model_version"] == v2["version"]
    assert "dropped" in agent.logs()
    # the ghost device made up by garbage presence never became a registered device with bad data
    for device in controller.client.devices():
        assert device["id"] in ("dev1",) or device["online"] is False
    attacker.loop_stop()


def test_rpc_with_bad_tensor_is_a_clear_error(controller, start_agent, mlp_model):
    start_agent("dev1", wait_online=controller)
    v1 = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
    from edgectl.client import ApiError

    bad_inputs = [
        ({"x": {"datatype": "FP32", "shape": [1, 16], "b64": "!!"}}, "not valid base64"),
        ({"x": {"datatype": "FP32", "shape": [1, 3], "b64": "AAAAAAAAAAAAAAAA"}}, "expected [-1, 16]"),
        ({"y": {"datatype": "FP32", "shape": [1], "b64": "AAAAAA=="}}, "unknown input"),
    ]
    for inputs, message in bad_inputs:
        try:
            controller.client.infer("dev1", "mlp", inputs)
        except ApiError as exc:
            assert exc.status == 400 and message in str(exc), str(exc)
        else:
            raise AssertionError("bad input was accepted")
    try:
        controller.client.infer("dev1", "nomodel", bad_inputs[0][0])
    except ApiError as exc:
        assert exc.status == 404 and "not serving" in str(exc)
