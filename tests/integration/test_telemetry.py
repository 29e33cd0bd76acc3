"""Telemetry: the publisher's replay order, controller storage (SQLite and PostgreSQL), drift, /metrics, and the whole
path with a real agent, `edgectl telemetry` and `edgectl top` (recording and the disk queue: tests/unit/agent)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from conftest import wait_model_state, wait_until
from test_e2e import edgectl, v2_infer
from test_registry import POSTGRES_URL, postgres_available

from agent.telemetry.publisher import TelemetryPublisher
from agent.telemetry.stats import Recorder
from controller.api.metrics import render
from controller.db.database import Database
from controller.telemetry.ingest import TelemetryIngest
from protocol import ModelTelemetry, OutputStats, Telemetry, latency_bucket

# -- the publisher ---------------------------------------------------------------------------------------------


class FakeInfo:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def wait_for_publish(self, timeout=None) -> None:
        pass

    def is_published(self) -> bool:
        return self.ok


class FakeLink:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.sent: list[dict] = []

    def publish(self, topic, payload, qos=1, retain=False):
        if not self.connected.is_set():
            return FakeInfo(False)
        self.sent.append(json.loads(payload))
        return FakeInfo(True)


def test_publisher_queues_offline_then_sends_live_first_and_drains_in_order(tmp_path):
    link = FakeLink()
    recorder = Recorder()
    pub = TelemetryPublisher(
        "dev1", "edge/v1/devices/dev1/telemetry", recorder, link, tmp_path / "q", interval_s=0.1, replay_rate=200
    )
    pub.start()
    stats = recorder.model("m", "1")
    wait_until(lambda: len(pub.queue) >= 5, 10, "samples to queue while offline")
    stats.record(2.0)
    link.connected.set()
    pub.on_connected()
    wait_until(lambda: len(pub.queue) == 0 and len(link.sent) >= 6, 10, "the backlog to drain")
    pub.stop()
    seqs = [m["seq"] for m in link.sent]
    first = seqs[0]
    backlog = [s for s in seqs if s < first]
    assert backlog == sorted(backlog) and backlog[0] == 1, seqs  # live sample first, then the backlog oldest first
    assert sum(m["models"][0]["requests"] for m in link.sent if m["models"]) == 1
    assert len(pub.queue) == 1  # stop() wrote the window in memory to disk
    assert all(Telemetry.model_validate(m) for m in link.sent)


def test_samples_in_doubt_when_the_link_drops_are_sent_again(tmp_path):
    """A broker that acknowledged a sample and then stopped may have lost it: the samples acknowledged just before a
    drop go out again after the reconnect (the controller stores each (device, ts) once)."""
    link = FakeLink()
    link.connected.set()
    recorder = Recorder()
    pub = TelemetryPublisher("dev1", "t", recorder, link, tmp_path / "q", interval_s=0.1, replay_rate=200)
    pub.start()
    wait_until(lambda: len(link.sent) >= 3, 10, "a few samples out")
    link.connected.clear()
    before = [m["seq"] for m in link.sent]
    wait_until(lambda: len(pub.queue) >= 2, 10, "the loop to notice the drop and queue")
    link.connected.set()
    pub.on_connected()
    wait_until(lambda: len(pub.queue) == 0, 10, "the backlog to drain")
    pub.stop()
    again = [m["seq"] for m in link.sent[len(before) :]]
    assert set(before[-2:]) <= set(again)  # the last ones before the drop went out a second time
    assert set(range(1, max(again) + 1)) <= set(before) | set(again)  # and nothing is missing


# -- controller storage, drift, /metrics -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'c.db'}")
        yield database
        database.close()
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
    database = Database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    yield database
    database.close()
    with admin.begin() as conn:
        conn.execute(sa.text(f"drop schema {schema} cascade"))
    admin.dispose()


def sample(device="dev1", ts=1000.0, mean=0.5, std=0.1, requests=10, latency_ms=2.0, version="1") -> bytes:
    return Telemetry(
        device_id=device,
        ts=ts,
        start=ts - 10,
        seq=int(ts),
        models=[
            ModelTelemetry(
                name="mlp",
                version=version,
                requests=requests,
                latency=[(latency_bucket(latency_ms), requests)],
                latency_sum_ms=latency_ms * requests,
                latency_max_ms=latency_ms,
                outputs={"probs": OutputStats(sampled=1, count=40, mean=mean, std=std, min=0.0, max=1.0)},
            )
        ],
        resources={"cpu_percent": 12.5, "mem_percent": 40.0, "temperature_c": 51.0},
    ).encode()


def test_ingest_stores_batches_ignores_duplicates_and_applies_retention(db):
    ingest = TelemetryIngest(db, retention_s=3600)
    ingest.start()
    now = time.time()
    for i in range(50):
        ingest.submit("dev1", sample(ts=now - 100 + i))
    ingest.submit("dev1", sample(ts=now - 100))  # a replayed duplicate
    ingest.submit("dev1", b"{not json")
    ingest.submit("dev2", sample(device="dev1", ts=now))  # on another device's topic
    ingest.submit("dev1", sample(ts=now - 7200))  # past retention
    assert ingest.flush()
    assert db.count_telemetry() == 51 and ingest.rejected == 2
    assert ingest.devices["dev1"].models["mlp"].requests_total == 51 * 10  # the duplicate is not counted again
    assert len(ingest.history("dev1", now - 150)) == 50
    samples = ingest.history("dev1", now - 100, limit=5)
    assert [s["ts"] for s in samples] == [now - 100 + i for i in range(45, 50)]
    assert samples[0]["models"][0]["p50_ms"] == 2.0  # the bucket bound 2.51, capped at the window max
    assert ingest.prune_now() == 1 and db.count_telemetry() == 50
    ingest.stop()


def test_drift_baseline_from_first_window_flags_a_shift_and_survives_restart(db):
    ingest = TelemetryIngest(db, drift_threshold=3.0)
    ingest.start()
    ingest.submit("dev1", sample(ts=1000, mean=0.5, std=0.1))
    ingest.submit("dev1", sample(ts=1010, mean=0.52, std=0.1))
    assert ingest.flush()
    model = ingest.device_summary("dev1")["models"][0]
    assert not model["drifting"] and model["drift"]["probs"]["score"] == pytest.approx(0.2)
    ingest.submit("dev1", sample(ts=1020, mean=0.9, std=0.1))
    assert ingest.flush()
    model = ingest.device_summary("dev1")["models"][0]
    assert model["drifting"] and model["drift_score"] == pytest.approx(4.0)
    ingest.stop()

    again = TelemetryIngest(db, drift_threshold=3.0)  # baseline kept in the database
    again.start()
    again.submit("dev1", sample(ts=1030, mean=0.95, std=0.1))
    again.submit("dev1", sample(ts=1040, mean=0.1, std=0.1, version="2"))  # a new version has its own baseline
    assert again.flush()
    model = again.device_summary("dev1")["models"][0]
    assert model["version"] == "2" and not model["drifting"]
    assert again.reset_baseline("dev1") == 2
    again.stop()


def test_metrics_exposition_is_well_formed_and_bounded(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    for i in range(5):
        db.record_presence(f"dev{i}", True, {}, "0.1", None)
    ingest = TelemetryIngest(db)
    ingest.start()
    for i in range(5):
        ingest.submit(f"dev{i}", sample(device=f"dev{i}", ts=1000 + i))
    ingest.submit("dev0", sample(device="dev0", ts=2000, mean=5.0))
    assert ingest.flush()
    text = render(db.list_devices(), ingest, max_devices=3)
    families: list[str] = []
    sample_re = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+]+|NaN|\+Inf)$')
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            families.append(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert sample_re.match(line), line
        name = sample_re.match(line).group(1)
        assert name.startswith(families[-1]), f"{name} outside its family {families[-1]}"
    assert len(families) == len(set(families))
    assert 'edge_fleet_devices{state="online"} 5' in text
    assert "edge_metrics_devices_omitted 2" in text
    assert 'edge_model_drift{device="dev0",model="mlp"} 1' in text
    assert 'edge_model_requests_total{device="dev1",model="mlp"} 10' in text
    assert 'device="dev4"' not in text  # past max_devices
    assert "edge_fleet_latency_ms_count 60" in text and 'edge_fleet_latency_ms_bucket{le="+Inf"} 60' in text
    labels = set(re.findall(r'([a-z_]+)="', text))
    assert labels <= {"state", "result", "device", "model", "version", "backend", "quantile", "le"}
    ingest.stop()
    db.close()


# -- the whole path --------------------------------------------------------------------------------------------


FAST = "telemetry_interval_s = 0.5\n"


def test_agent_telemetry_reaches_controller_edgectl_and_metrics(controller, start_agent, mlp_model):
    agent = start_agent("dev1", config=FAST, wait_online=controller)
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    for _ in range(40):
        v2_infer(agent, "mlp", x)

    def served() -> int:
        data = c._request("GET", "/api/v1/devices/dev1/telemetry", params={"since": "5m"})
        return sum(m["requests"] for s in data["samples"] for m in s["models"])

    wait_until(lambda: served() >= 40, 20, "40 requests in the stored telemetry")
    result = edgectl(controller.url, "telemetry", "dev1", "--since", "10m", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    models = [m for s in data["samples"] for m in s["models"]]
    assert {m["name"] for m in models} == {"mlp"} and all(m["p50_ms"] > 0 for m in models)
    assert data["samples"][-1]["resources"]["cpu_percent"] is not None
    assert any("probs" in m["outputs"] for m in models)

    table = edgectl(controller.url, "telemetry", "dev1")
    assert table.returncode == 0 and "mlp@1" in table.stdout, table.stderr
    top = edgectl(controller.url, "top", "--once")
    assert top.returncode == 0, top.stderr
    assert "dev1" in top.stdout and "mlp@1" in top.stdout and "onnxruntime" in top.stdout
    status = edgectl(controller.url, "status", "dev1")
    assert status.returncode == 0 and "p50" in status.stdout
    metrics = httpx.get(f"{controller.url}/metrics").text
    assert re.search(r'edge_model_requests_total\{device="dev1",model="mlp"\} (\d+)', metrics)
    assert 'edge_model_info{device="dev1",model="mlp",version="1"' in metrics
    bad = edgectl(controller.url, "telemetry", "nope")
    assert bad.returncode == 1 and "unknown device" in bad.stderr


def test_sigterm_flushes_the_window_to_disk_and_it_is_replayed_after_restart(controller, start_agent, mlp_model):
    agent = start_agent("dev1", config="telemetry_interval_s = 3600\n", wait_online=controller)
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})
    x = np.zeros((1, 16), dtype=np.float32)
    for _ in range(7):
        v2_infer(agent, "mlp", x)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0
    queued = sorted((agent.data_dir / "telemetry").glob("*.json"))
    assert len(queued) == 1
    message = Telemetry.model_validate_json(queued[0].read_bytes())
    assert message.models[0].requests == 7

    agent.start()  # the interval is an hour: the replayed sample, and at most one live sample sent before it

    def replayed():
        samples = c._request("GET", "/api/v1/devices/dev1/telemetry", params={"since": "1h"})["samples"]
        return next((s for s in samples if s["ts"] == message.ts), None)

    sample = wait_until(replayed, 20, "the queued sample to be replayed")
    assert sample["models"][0]["requests"] == 7
    wait_until(lambda: not list((agent.data_dir / "telemetry").glob("*.json")), 10, "the queue to empty")


def test_grafana_dashboard_uses_only_exported_metrics(tmp_path):
    from pathlib import Path

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.record_presence("dev1", True, {}, "0.1", None)
    ingest = TelemetryIngest(db)
    ingest.start()
    full = Telemetry.model_validate_json(sample())
    full.resources = full.resources.model_copy(update={"rss_mb": 50.0, "disk_free_mb": 1e4, "load1": 0.5})
    full.resources = full.resources.model_copy(update={"gpu_load_percent": 10.0, "gpu_power_w": 5.0})
    ingest.submit("dev1", full.encode())
    assert ingest.flush()
    exported = {line.split()[2] for line in render(db.list_devices(), ingest).splitlines() if line.startswith("# TYPE")}
    ingest.stop()
    db.close()
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"edge_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported
    assert "edge_model_drift_psi" in used  # the quality-drift panel graphs what the class mix and inputs moved
    rules = (Path(__file__).parents[2] / "docs" / "prometheus-alerts.yml").read_text()  # the alert rule beside it
    alerted = set(re.findall(r"edge_[a-z_]+", rules))
    assert "alert: EdgeModelDrift" in rules and {"edge_model_drift", "edge_model_drift_psi"} <= alerted <= exported


def test_telemetry_reader_parses_packets_split_anywhere_and_acks_each_qos1_publish():
    from controller.telemetry.subscriber import TelemetrySubscriber, _packet, _string

    payloads = [b"x" * n for n in (0, 5, 200, 20_000)]
    stream = _packet(0x20, b"\x00\x00") + _packet(0x90, b"\x00\x01\x01")
    for i, body in enumerate(payloads):
        stream += _packet(0x32, _string(f"edge/v1/devices/d{i}/telemetry") + bytes([0, i + 1]) + body)
    stream += _packet(0x30, _string("edge/v1/devices/q0/telemetry") + b"qos0")
    for cut in (1, 2, 3, 7, 100, 20_050, len(stream) - 1):
        buffer = bytearray()
        messages, acks, control = [], [], []
        for part in (stream[:cut], stream[cut:]):
            buffer += part
            m, a, c = TelemetrySubscriber._parse(buffer)
            messages += m
            acks += a
            control += c
        assert buffer == b""
        assert [p for _, p in messages] == [*payloads, b"qos0"]
        assert messages[0][0] == "edge/v1/devices/d0/telemetry"
        assert acks == [b"\x40\x02\x00" + bytes([i + 1]) for i in range(4)]
        assert [k for k, _ in control] == [0x20, 0x90]


def test_broker_outage_queues_on_disk_and_nothing_is_lost(tmp_path, prefix, model_dir):
    from conftest import AgentProcess, ControllerHandle, find_mosquitto, free_port
    from test_resilience import RestartableMosquitto, infer_ok

    from edgectl.sample_models import mlp

    binary = find_mosquitto()
    if not binary:
        pytest.skip("needs a mosquitto binary to stop and restart a broker")
    mosq = RestartableMosquitto(binary, tmp_path, free_port())
    mosq.start()
    controller = ControllerHandle(mosq.broker, tmp_path / "controller", prefix)
    fleet = controller.bg.controller.fleet
    wait_until(fleet.telemetry_link.connected.is_set, 10, "the telemetry subscription")
    config = tmp_path / "agent.toml"
    config.write_text(f'topic_prefix = "{prefix}"\ntelemetry_interval_s = 0.3\ntelemetry_replay_rate = 50\n')
    port = free_port()
    args = ["--config", str(config), "--broker", mosq.broker.url, "--device-id", "dev1",
            "--data-dir", str(tmp_path / "agent"), "--api", f"127.0.0.1:{port}"]  # fmt: skip
    agent = AgentProcess("dev1", tmp_path / "agent", port, args, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: controller.client.devices() and controller.device("dev1")["online"], 20, "dev1 online")
        v1 = controller.client.upload_model(mlp(model_dir / "tel1.onnx", seed=31), "mlp", None)
        controller.client.deploy("mlp", v1["version"], ["dev1"])
        wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})
        done = sum(infer_ok(agent, "mlp") for _ in range(20))
        mosq.stop()
        done += sum(infer_ok(agent, "mlp") for _ in range(30))  # counted while the broker is gone
        wait_until(lambda: len(list((tmp_path / "agent" / "telemetry").glob("*.json"))) >= 5, 10, "queued samples")
        mosq.start()
        done += sum(infer_ok(agent, "mlp") for _ in range(10))
        assert done == 60

        def stored():
            samples = fleet.telemetry.history("dev1", 0)
            return samples, sum(m["requests"] for s in samples for m in s["models"])

        wait_until(lambda: stored()[1] == 60, 30, "all 60 requests in the stored telemetry")
        wait_until(lambda: not list((tmp_path / "agent" / "telemetry").glob("*.json")), 10, "the disk queue to drain")
        samples, _ = stored()
        seqs = sorted(s["seq"] for s in samples)
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a sample is missing"
    finally:
        agent.kill()
        controller.stop()
        mosq.stop()


def test_a_stale_offline_controller_presence_is_answered_with_online(broker, controller, prefix):
    """The controller's offline sent as the broker died (its telemetry connection noticed first) is resent by paho
    after the reconnect, behind the new online: a controller that is up says online again, or agents would keep their
    telemetry on disk for good (a CI failure of the outage test above, one run in three under load)."""
    import paho.mqtt.publish as publish

    from controller.replicas.retained import read_retained
    from protocol import ControllerPresence, Topics, decode
    from protocol.link import BrokerAddress

    fleet = controller.bg.controller.fleet
    wait_until(lambda: fleet.connected and fleet.telemetry_link.connected.is_set(), 10, "both controller connections")
    topic = Topics(prefix).controller_presence
    stale = ControllerPresence(online=False, version="0").encode()
    publish.single(topic, stale, qos=1, retain=True, hostname="127.0.0.1", port=broker.port)

    def retained_online() -> bool:
        found = read_retained(BrokerAddress.parse(broker.url), topic, quiet_s=0.3)
        return bool(found) and decode(ControllerPresence, found[-1][1]).online

    wait_until(retained_online, 10, "the controller's retained presence online again")
