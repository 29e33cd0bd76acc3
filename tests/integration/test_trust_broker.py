"""Issue 26, finding 1: a device that joins the controller replicas' shared-subscription group drops a share of every
other device's messages (Mosquitto hands each message to one member; the device's copy fails the read check and is
gone). Attacked here against a Mosquitto started from `edge-controller broker-config` + `acl`, a controller on
PostgreSQL (so it subscribes through `$share`), and a device with real credentials joining every group it can name."""

from __future__ import annotations

import threading
import time

import httpx
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from conftest import wait_until
from hardening import PASSWORDS, ControllerProcess, Device, FleetMosquitto
from paho.mqtt.enums import CallbackAPIVersion
from test_migrations import fresh_database

from controller.db.database import make_engine
from controller.replicas.replication import share_group
from edgectl.client import ControllerClient
from protocol import ArtifactRequest, DeviceState, Presence, Telemetry, Topics, decode_frame

TOPICS = Topics("edge")
KINDS = ("telemetry", "state", "artifact/request")
# every group a device could name: the old fixed one, the name itself, obvious variants
GUESSES = ("edge-controller-edge_v1", "edge-controller", "controller", "edge", "edge_v1", "replicas")


@pytest.fixture
def fleet(tmp_path):
    mosq = FleetMosquitto(tmp_path)
    with fresh_database() as db_url:
        c = ControllerProcess(tmp_path, "--db", db_url, broker=mosq.controller_url()).start()
        try:
            wait_until(lambda: httpx.get(f"{c.url}/api/v1/health").json()["telemetry_subscribed"], 30, "subscribed")
            yield mosq, c, db_url
        finally:
            c.stop()
            mosq.stop()


def join_groups(port: int) -> tuple[mqtt.Client, list[str]]:
    """`evil` (a device's real credentials, MQTT 5) subscribes to every guessable group; returns the grants."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="evil", protocol=mqtt.MQTTv5)
    client.username_pw_set("evil", PASSWORDS["evil"])
    grants: list[str] = []
    done = threading.Event()
    filters = [(f"$share/{g}/{TOPICS.all_devices(k)}", 1) for g in GUESSES for k in KINDS]

    def on_subscribe(c, u, mid, codes, props):
        grants.extend(str(code) for code in codes)
        done.set()

    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)
    client.subscribe(filters)
    assert done.wait(10)
    return client, grants


def delivered(send, check, count: int = 20, each_s: float = 3.0) -> int:
    """Send `count` messages one at a time; how many the controller acted on (each given `each_s` to show)."""
    seen = 0
    for i in range(count):
        send(i)
        deadline = time.monotonic() + each_s
        while time.monotonic() < deadline:
            if check(i):
                seen += 1
                break
            time.sleep(0.02)
    return seen


def test_a_device_in_every_group_it_can_name_costs_no_other_device_a_message(fleet, tmp_path, mlp_model):
    mosq, controller, db_url = fleet
    engine = make_engine(db_url)
    evil, grants = join_groups(mosq.port)
    dev = Device(mosq.port, "dev-b", PASSWORDS["dev-b"], subscribe=(TOPICS.device("dev-b", "artifact/chunk"),))
    try:
        assert grants and all("Granted" in g for g in grants), grants  # Mosquitto 2.0 lets a device join any group
        dev.publish(TOPICS.device("dev-b", "presence"), Presence(device_id="dev-b", online=True).encode(), True)
        client = ControllerClient(controller.url)
        wait_until(lambda: client.devices(), 10, "dev-b's presence")
        base = time.time()

        def telemetry(i: int) -> None:
            ts = base + i
            sample = Telemetry(device_id="dev-b", ts=ts, start=ts - 1, interval_s=1.0, seq=i + 1)
            dev.publish(TOPICS.device("dev-b", "telemetry"), sample.encode())

        def stored(i: int) -> bool:
            with engine.connect() as conn:
                query = sa.text("select count(*) from telemetry where device_id = 'dev-b' and ts = :ts")
                return bool(conn.execute(query, {"ts": base + i}).scalar())

        def state(i: int) -> None:
            dev.publish(TOPICS.device("dev-b", "state"), DeviceState(device_id="dev-b", ts=base + i).encode())

        def recorded(i: int) -> bool:
            with engine.connect() as conn:
                ts = conn.execute(sa.text("select state_ts from devices where id = 'dev-b'")).scalar()
                return ts is not None and ts >= base + i

        model = client.upload_model(mlp_model, "mlp", None)
        client.deploy("mlp", model["version"], ["dev-b"])
        reply = TOPICS.device("dev-b", "artifact/chunk")

        def request(i: int) -> None:
            ask = ArtifactRequest(request_id=f"r{i}", reply_to=reply, sha256=model["sha256"], offset=0, length=64)
            dev.publish(TOPICS.device("dev-b", "artifact/request"), ask.encode())

        def answered(i: int) -> bool:
            return any(decode_frame(p)[0].request_id == f"r{i}" for _, p in list(dev.received))

        counts = {
            "telemetry": delivered(telemetry, stored),
            "state": delivered(state, recorded),
            "artifact/request": delivered(request, answered),
        }
        print(f"of 20 messages each, with a device in {len(GUESSES)} guessed groups: {counts}")
        assert counts == {"telemetry": 20, "state": 20, "artifact/request": 20}
        ours = share_group("edge-controller-edge_v1", PASSWORDS["edge-controller"])
        assert ours not in GUESSES and ours.startswith("edge-controller-edge_v1-") and len(ours) > 40
        assert "edge-controller-edge_v1-" not in controller.logs()  # the group never reaches a log line
    finally:
        evil.loop_stop()
        evil.disconnect()
        dev.close()
        engine.dispose()
