"""Issue 26, finding 4: a model recalled through replica A was still served by replica B, over HTTP and the MQTT
chunk path, until B restarted (B kept its own copy of each device's allowed artifacts). Two real replicas on one
PostgreSQL database and one Mosquitto; the device's fetches go to B (HTTP) and to whichever replica the broker picks
(MQTT, a shared subscription)."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import Broker, find_mosquitto, start_mosquitto, wait_until
from hardening import Device
from test_http_models import desired_message
from test_migrations import fresh_database
from test_replicas import BROKER_CONF, Replica

from edgectl.client import ControllerClient
from protocol import ArtifactRequest, Presence, Topics, decode_frame


@pytest.fixture
def pair(tmp_path, prefix):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (shared subscriptions need a real broker)")
    proc, port = start_mosquitto(binary, tmp_path, BROKER_CONF)
    with fresh_database() as db_url:
        replicas = [Replica(db_url, port, tmp_path, prefix) for _ in range(2)]
        try:
            for replica in replicas:
                replica.start(wait=False)
            wait_until(lambda: all(r.ready() for r in replicas), 60, "two replicas")
            yield replicas, port
        finally:
            for replica in replicas:
                replica.stop()
            proc.terminate()
            proc.wait(5)


def test_a_model_recalled_through_one_replica_is_refused_by_the_other(pair, prefix, mlp_model):
    (a, b), port = pair
    topics = Topics(prefix)
    reply = topics.device("cam-01", "artifact/chunk")
    dev = Device(port, None, None, subscribe=(reply,))
    try:
        dev.publish(topics.device("cam-01", "presence"), Presence(device_id="cam-01", online=True).encode(), True)
        client = ControllerClient(a.url)
        wait_until(lambda: client.devices(), 20, "the device's presence")
        sha = client.upload_model(mlp_model, "mlp", None)["sha256"]
        client.deploy("mlp", None, ["cam-01"])
        broker = Broker(f"mqtt://127.0.0.1:{port}", port, "mosquitto", lambda: None)
        url = desired_message(broker, prefix, "cam-01")["models"][0]["url"].replace(a.url, b.url)

        def chunks(tag: str, count: int = 10) -> list[str | None]:
            """Ask `count` times over MQTT (the broker spreads them over both replicas); each answer's error code."""
            for i in range(count):
                ask = ArtifactRequest(request_id=f"{tag}{i}", reply_to=reply, sha256=sha, offset=0, length=64)
                dev.publish(topics.device("cam-01", "artifact/request"), ask.encode())
            mine = lambda: [h for h in (decode_frame(p)[0] for _, p in list(dev.received)) if h.request_id[0] == tag]  # noqa: E731
            wait_until(lambda: len(mine()) == count, 20, f"{count} chunk answers")
            return [h.error.code if h.error else None for h in mine()]

        assert httpx.get(url).status_code == 200  # B serves what A deployed (and now holds its copy of the list)
        assert chunks("d") == [None] * 10
        client.undeploy("cam-01", "mlp")
        time.sleep(3.0)  # longer than a replica trusts its copy
        recalled = httpx.get(url)
        after = chunks("u")
        print(f"after the recall through A: B answered HTTP {recalled.status_code}; MQTT answers {after}")
        assert recalled.status_code == 404 and after == ["not_deployed"] * 10
    finally:
        dev.close()
