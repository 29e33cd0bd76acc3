"""Issue 15, the broker side: a Mosquitto started from `edge-controller broker-config` with two devices' real
credentials, the embedded broker with a password file, secrets kept out of logs, and fair artifact serving."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import httpx
import pytest
from conftest import free_port, wait_until
from hardening import PASSWORDS, ControllerProcess, Device, FleetMosquitto

from protocol import ArtifactRequest, Presence, Topics, decode_frame

TOPICS = Topics("edge")


@pytest.fixture
def fleet_broker(tmp_path):
    mosq = FleetMosquitto(tmp_path)
    yield mosq
    mosq.stop()


def test_a_device_cannot_take_over_another_devices_session(fleet_broker):
    port = fleet_broker.port
    presence_a = TOPICS.device("dev-a", "presence")
    offline = Presence(device_id="dev-a", online=False).encode()
    watcher = Device(fleet_broker.controller_port, "edge-controller", PASSWORDS["edge-controller"],
                     subscribe=(presence_a,))  # fmt: skip
    dev_a = Device(port, "dev-a", PASSWORDS["dev-a"], client_id="dev-a", will=(presence_a, offline))
    try:
        dev_a.publish(presence_a, Presence(device_id="dev-a", online=True).encode(), retain=True)
        wait_until(lambda: watcher.received, 10, "dev-a's presence")
        # dev-b, with its own valid credentials, claims dev-a's client id
        thief = Device(port, "dev-b", PASSWORDS["dev-b"], client_id="dev-a")
        assert thief.refused is None
        time.sleep(1.0)
        assert dev_a.disconnects == 0  # with use_username_as_clientid the thief is "dev-b", not "dev-a"
        assert [p for _, p in watcher.received if p == offline] == []
        # device credentials are not valid on the controller's listener
        assert Device(fleet_broker.controller_port, "dev-a", PASSWORDS["dev-a"]).refused
        assert Device(port, None, None).refused  # anonymous
        # max_packet_size: a 5 MiB publish never reaches the controller, and the broker drops the client sending it
        telemetry = TOPICS.device("dev-a", "telemetry")
        big = Device(fleet_broker.controller_port, "edge-controller", PASSWORDS["edge-controller"],
                     subscribe=(telemetry,))  # fmt: skip
        time.sleep(0.3)
        dev_a.publish(telemetry, b"small")
        wait_until(lambda: big.received, 10, "the small message")
        dev_a.client.publish(telemetry, b"x" * (5 << 20), qos=1)
        wait_until(lambda: dev_a.disconnects, 10, "the broker to drop the client that sent 5 MiB")
        time.sleep(0.5)
        assert [p for _, p in big.received] == [b"small"]
        thief.close()
        big.close()
    finally:
        dev_a.close()
        watcher.close()


def test_controller_uses_a_password_file_and_never_logs_the_password(fleet_broker, tmp_path):
    secret = tmp_path / "broker-password"
    secret.write_text(PASSWORDS["edge-controller"] + "\n")
    url = f"mqtt://edge-controller@127.0.0.1:{fleet_broker.controller_port}"
    c = ControllerProcess(tmp_path, "--broker-password-file", str(secret), broker=url).start()
    try:
        wait_until(lambda: httpx.get(f"{c.url}/api/v1/health").json()["broker_connected"], 20, "the broker link")
        assert PASSWORDS["edge-controller"] not in c.logs()
        assert f"127.0.0.1:{fleet_broker.controller_port}" in c.logs()
    finally:
        c.stop()


def test_embedded_broker_with_a_password_file_refuses_anonymous(tmp_path):
    passwd = shutil.which("mosquitto_passwd")
    if not passwd:
        pytest.skip("needs mosquitto_passwd")
    users = tmp_path / "users"
    users.touch()
    subprocess.run([passwd, "-b", str(users), "dev-a", "a-secret"], check=True)
    port = free_port()
    c = ControllerProcess(tmp_path, "--broker-users-file", str(users), broker=f"embedded:{port}").start()
    try:
        wait_until(lambda: httpx.get(f"{c.url}/api/v1/health").json()["broker_connected"], 20, "its own link")
        assert Device(port, None, None).refused or Device(port, None, None).disconnects
        wrong = Device(port, "dev-a", "wrong")
        assert wrong.refused or wrong.disconnects
        ok = Device(port, "dev-a", "a-secret", subscribe=(TOPICS.controller_presence,))
        assert ok.refused is None
        wait_until(lambda: ok.received, 10, "the controller's presence for a logged-in device")
        ok.close()
    finally:
        c.stop()


def test_keygen_writes_a_private_key_no_one_else_can_read(tmp_path):
    out = tmp_path / "signing.pem"
    r = subprocess.run([sys.executable, "-m", "controller.cli", "keygen", "--out", str(out)], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_chunk_request_flood_does_not_starve_another_device(controller, prefix, tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).random((4096, 256), np.float32), "w")  # 4 MiB
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [w])  # fmt: skip
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    topics = Topics(prefix)
    port = int(controller.settings.broker.rsplit(":", 1)[1])
    evil = Device(port, None, None, client_id="evil")
    good = Device(port, None, None, client_id="good", subscribe=(topics.device("good", "artifact/chunk"),))
    # sees every chunk the controller sends, in its order (topics only: evil's answers are 4 MiB each)
    spy = Device(
        port, None, None, subscribe=(topics.device("evil", "artifact/chunk"), topics.device("good", "artifact/chunk"))
    )
    order: list[str] = []
    spy.client.on_message = lambda c, u, m: order.append(m.topic.split("/")[-3])
    try:
        for device, client in (("evil", evil), ("good", good)):
            client.publish(topics.device(device, "presence"), Presence(device_id=device, online=True).encode())
        wait_until(lambda: len(controller.client.devices()) == 2, 10, "both devices")
        model = controller.client.upload_model(path, "big", None)
        controller.client.deploy("big", model["version"], ["evil", "good"])
        sha = model["sha256"]

        def request(device: str, i: int) -> bytes:
            reply = topics.device(device, "artifact/chunk")
            return ArtifactRequest(
                request_id=f"{device}-{i}", reply_to=reply, sha256=sha, offset=0, length=4 << 20
            ).encode()

        for i in range(1500):  # evil asks for the whole 4 MiB again and again, never reading the answers
            sent = evil.client.publish(topics.device("evil", "artifact/request"), request("evil", i), qos=1)
        sent.wait_for_publish(60)  # the whole flood is at the controller before good asks
        good.publish(topics.device("good", "artifact/request"), request("good", 0))
        started = time.monotonic()
        wait_until(lambda: good.received, 60, "good's chunk despite the flood")
        waited = time.monotonic() - started
        wait_until(lambda: "good" in order, 30, "the spy to see good's chunk")
        ahead = order.index("good")
        assert ahead < 600, (
            ahead
        )  # one queue for all: ~1,000 more of evil's 4 MiB answers went first (or good's dropped)
        header, data = decode_frame(good.received[0][1])
        assert header.error is None and len(data) == 4 << 20 and header.total == path.stat().st_size
        queue = controller.bg.controller.fleet._chunk_requests
        wait_until(lambda: queue.dropped > 0, 30, "evil's lane to overflow")  # evil's requests, never good's
        print(
            f"good's chunk came {waited:.1f}s after 1500 flood requests, {ahead} of evil's served before it, "
            f"{queue.dropped} of evil's dropped"
        )
    finally:
        spy.close()
        evil.close()
        good.close()


def test_generated_config_parses_with_mosquitto(fleet_broker):
    text = fleet_broker.conf.read_text()
    assert "use_username_as_clientid true" in text and "max_packet_size" in text
    assert "allow_anonymous true" not in text
    assert os.path.exists(fleet_broker.conf)
