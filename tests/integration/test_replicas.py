"""Failure drills with controller replicas: three `edge-controller serve` processes on one PostgreSQL database and one
Mosquitto, simulated devices publishing telemetry (QoS 1). Started at the same moment on an empty database they all
come up; any of them answers the API; one SIGKILLed mid-ingest loses no sample and stores none twice (another replica
drains its session); when the leader dies another takes over and publishes the desired states again."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from conftest import Broker, find_mosquitto, start_mosquitto, wait_model_state, wait_until
from hardening import ControllerProcess
from paho.mqtt.enums import CallbackAPIVersion
from test_http_models import desired_message, stored_intact
from test_migrations import fresh_database

from controller.db.database import make_engine
from edgectl.client import ControllerClient
from protocol import Presence, Telemetry, Topics

# the controller acknowledges telemetry once it is committed: the broker must let a batch's worth be in flight
BROKER_CONF = "max_inflight_messages 1000\nmax_queued_messages 100000\n"


class Replica(ControllerProcess):
    """One of the replicas: the same database, broker, topic prefix and data dir as the others."""

    def __init__(self, db_url: str, broker_port: int, tmp: Path, prefix: str) -> None:
        super().__init__(tmp, "--db", db_url, "--topic-prefix", prefix, broker=f"mqtt://127.0.0.1:{broker_port}")

    def health(self) -> dict | None:
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def ready(self) -> bool:
        health = self.health()
        return bool(health and health["broker_connected"] and health["telemetry_subscribed"])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def cluster(tmp_path, prefix):
    """Mosquitto, a fresh PostgreSQL database and three replicas started at the same moment."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (shared subscriptions need a real broker)")
    broker, port = start_mosquitto(binary, tmp_path, BROKER_CONF)
    with fresh_database() as db_url:
        replicas = [Replica(db_url, port, tmp_path, prefix) for _ in range(3)]
        for replica in replicas:
            replica.start(wait=False)  # at the same moment: migrations must run once
        try:
            wait_until(lambda: all(r.ready() for r in replicas), 60, "three replicas to come up")
            yield replicas, port, db_url
        except BaseException:
            for r in replicas:
                print(r.log.read_text()[-3000:])
            raise
        finally:
            for replica in replicas:
                replica.stop()
            broker.terminate()
            broker.wait(5)


class Devices:
    """Simulated devices: each its own MQTT client with a retained presence, publishing telemetry (QoS 1) at `hz`.
    `acked` holds (device_id, ts) of every sample the broker acknowledged: what the controller must store."""

    def __init__(self, port: int, prefix: str, count: int) -> None:
        self.topics = Topics(prefix)
        self.ids = [f"sim-{i}" for i in range(count)]
        self.clients = []
        self.acked: set[tuple[str, float]] = set()
        self._pending: list[tuple[mqtt.MQTTMessageInfo, tuple[str, float]]] = []
        self._stop = threading.Event()
        for device_id in self.ids:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{device_id}")
            client.max_inflight_messages_set(100)
            client.connect("127.0.0.1", port)
            client.loop_start()
            presence = Presence(device_id=device_id, online=True, agent_version="sim")
            client.publish(self.topics.device(device_id, "presence"), presence.encode(), 1, retain=True)
            self.clients.append(client)

    def run(self, seconds: float, hz: float) -> None:
        deadline = time.time() + seconds
        seq = 0
        while time.time() < deadline:
            seq += 1
            for device_id, client in zip(self.ids, self.clients):
                ts = round(time.time(), 6)
                sample = Telemetry(device_id=device_id, ts=ts, start=ts - 1 / hz, interval_s=1 / hz, seq=seq)
                info = client.publish(self.topics.device(device_id, "telemetry"), sample.encode(), qos=1)
                self._pending.append((info, (device_id, ts)))
            time.sleep(1 / hz)

    def settle(self, timeout: float = 30) -> None:
        for info, key in self._pending:
            info.wait_for_publish(timeout)
            assert info.is_published()
            self.acked.add(key)

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


def stored(db_url: str, prefix: str = "sim-") -> list[tuple[str, float]]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        query = sa.text("select device_id, ts from telemetry where device_id like :p")
        rows = [(d, t) for d, t in conn.execute(query, {"p": prefix + "%"}).all()]
    engine.dispose()
    return rows


def test_replicas_started_together_all_come_up_and_any_answers_the_api(cluster, mlp_model):
    replicas, _, db_url = cluster
    assert len({r.health()["replica"] for r in replicas}) == 3
    assert sum(r.health()["leader"] for r in replicas) == 1
    first = ControllerClient(replicas[0].url)
    version = first.upload_model(mlp_model, "mlp", None)["version"]
    for replica in replicas:
        assert [m["version"] for m in ControllerClient(replica.url).models()] == [version]


def test_every_replica_serves_an_artifact_deployed_through_another(cluster, broker, prefix, mlp_model):
    """A device's HTTP download may reach any replica behind a load balancer, not only the one that deployed."""
    replicas, port, _ = cluster
    devices = Devices(port, prefix, count=1)
    try:
        client = ControllerClient(replicas[0].url)
        wait_until(lambda: len(client.devices()) == 1, 20, "the device's presence")
        sha = client.upload_model(mlp_model, "mlp", None)["sha256"]
        for replica in replicas:
            assert httpx.head(f"{replica.url}/api/v1/artifacts/{sha}").status_code == 403  # no device-bound URL
        client.deploy("mlp", None, ["sim-0"])
        url = desired_message(broker, prefix, "sim-0")["models"][0]["url"]
        for replica in replicas:  # the URL one replica signed, at each replica (the same data dir holds the key)
            got = httpx.get(url.replace(replicas[0].url, replica.url))
            assert got.status_code == 200 and got.content == mlp_model.read_bytes(), replica.url
        assert httpx.head(url.replace(replicas[0].url, replicas[2].url).replace(sha, "0" * 64)).status_code == 403
    finally:
        devices.close()


@pytest.fixture
def broker(cluster) -> Broker:
    """The cluster's Mosquitto, for conftest's start_agent."""
    port = cluster[1]
    return Broker(f"mqtt://127.0.0.1:{port}", port, "mosquitto", lambda: None)


def test_a_replica_killed_mid_push_the_push_completes(cluster, start_agent, tmp_path):
    """Two real agents fetch a model in MQTT chunks (one 16 KiB chunk at a time, answered by whichever replica the
    shared subscription picks); the leader is SIGKILLed mid-download: chunks it never answered are asked again and
    answered by the survivors, and both devices serve the model."""
    from edgectl.sample_models import mlp

    replicas = cluster[0]
    config = "http_downloads = false\nchunk_bytes = 16384\ndownload_window = 1\nrequest_timeout_s = 2\n"
    agents = [start_agent(device_id, config=config) for device_id in ("pa", "pb")]
    leader = next(r for r in replicas if r.health()["leader"])
    survivor = ControllerClient(next(r for r in replicas if r is not leader).url)
    wait_until(lambda: len(survivor.devices()) == 2, 30, "both agents online")
    record = survivor.upload_model(mlp(tmp_path / "push.onnx", pad_mb=24, seed=51), "pushed", None)
    survivor.deploy("pushed", record["version"], ["pa", "pb"])
    parts = [a.data_dir / "store" / "partial" / f"{record['sha256']}.part" for a in agents]
    wait_until(lambda: all(p.exists() and p.stat().st_size > record["size"] // 10 for p in parts), 60,
               "both downloads under way", poll=0.005)  # fmt: skip
    leader.kill()
    assert all(p.exists() and p.stat().st_size < record["size"] for p in parts)  # the kill landed mid-download
    for agent in agents:
        wait_model_state(survivor, agent.device_id, "pushed", record["sha256"], {"serving"}, timeout=120)
        assert stored_intact(agent, record["sha256"])


def test_a_replica_killed_mid_ingest_loses_no_sample_and_the_leader_is_taken_over(cluster, prefix, mlp_model):
    replicas, port, db_url = cluster
    devices = Devices(port, prefix, count=20)
    try:
        client = ControllerClient(replicas[1].url)
        wait_until(lambda: len(client.devices()) == 20, 20, "the devices' presence")
        client.upload_model(mlp_model, "mlp", None)
        client.deploy("mlp", None, ["sim-0"])
        desired_topic = devices.topics.device("sim-0", "desired")
        devices.clients[0].publish(desired_topic, b"", 1, retain=True).wait_for_publish(5)  # the broker forgets it
        republished: list[bytes] = []
        watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-watcher")
        watcher.on_message = lambda c, u, m: m.payload and republished.append(m.payload)
        watcher.connect("127.0.0.1", port)
        watcher.subscribe(desired_topic, 1)
        watcher.loop_start()

        leader = next(r for r in replicas if r.health()["leader"])
        survivors = [r for r in replicas if r is not leader]
        killer = threading.Timer(3.0, leader.kill)
        killer.start()
        devices.run(seconds=8.0, hz=20)  # 20 devices at 20 Hz: 400 samples/s, the kill 3 s in
        killer.join()
        devices.settle()
        sent = devices.acked
        assert len(sent) > 2500

        wait_until(lambda: len(stored(db_url)) >= len(sent), 60, "every acknowledged sample to be stored")
        rows = stored(db_url)
        assert len(rows) == len(set(rows)) == len(sent)  # none stored twice
        assert set(rows) == sent  # none lost
        pattern = re.compile(r"drained the telemetry session of dead replica \S+: (\d+)")
        drained = wait_until(
            lambda: [int(n) for r in survivors for n in pattern.findall(r.log.read_text())], 30, "the drain"
        )
        assert drained[0] > 0  # the dead replica's session held samples (in flight, and queued since)

        wait_until(lambda: republished, 40, "the new leader to publish the desired state again")
        assert b'"sim-0"' in republished[-1]
        assert sum(bool(r.health()["leader"]) for r in survivors) == 1
        for replica in survivors:  # both survivors answer, from the shared database
            assert ControllerClient(replica.url).device("sim-0")["id"] == "sim-0"
        watcher.loop_stop()
    finally:
        devices.close()


if os.environ.get("EDGE_TEST_BROKER") == "embedded":  # the embedded amqtt broker has no shared subscriptions
    pytestmark = pytest.mark.skip("replicas need Mosquitto (shared subscriptions)")
