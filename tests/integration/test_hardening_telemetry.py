"""Issue 15, telemetry: hostile samples sent with paho through a real broker to a real controller cost the honest
devices nothing (NaN, over-long names, rows the database refuses, oversized packets, future dates, floods)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
from conftest import ControllerHandle, wait_until
from hardening import Device
from test_registry import POSTGRES_URL, postgres_available

from controller.db.schema import telemetry as telemetry_table
from controller.telemetry.budget import TelemetryBudget
from protocol import ControllerPresence, ModelTelemetry, OutputStats, Telemetry, Topics, decode


def honest(device: str, ts: float, outputs: dict | None = None) -> bytes:
    stats = outputs or {"probs": OutputStats(sampled=1, count=10, mean=0.5, std=0.1)}
    model = ModelTelemetry(name="mlp", version="1", requests=3, latency=[(10, 3)], outputs=stats)
    return Telemetry(device_id=device, ts=ts, start=ts - 10, models=[model]).encode()


def raw(device: str, ts: str, name: str = "probs") -> bytes:
    return (
        f'{{"v": 1, "kind": "telemetry", "device_id": "{device}", "ts": {ts}, "models": '
        f'[{{"name": "mlp", "version": "1", "outputs": {{"{name}": {{"count": 1, "mean": 0.5}}}}}}]}}'
    ).encode()


class Handle(ControllerHandle):
    def __init__(self, broker, data_dir, prefix, db=None, **extra) -> None:
        self.extra = extra
        super().__init__(broker, data_dir, prefix, db=db)

    def start(self) -> None:
        self.settings = dataclasses.replace(self.settings, **self.extra)
        super().start()

    @property
    def ingest(self):
        return self.bg.controller.telemetry

    def stored(self, device: str) -> int:
        return len(self.ingest.history(device, 0))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield None
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"h_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"drop schema {schema} cascade"))
    admin.dispose()


def test_nan_and_overlong_names_cost_no_honest_rows(broker, tmp_path, prefix, db_url):
    c = Handle(broker, tmp_path / "c", prefix, db=db_url)
    topics = Topics(prefix)
    client = Device(broker.port, None, None)
    try:
        now = time.time()
        client.publish(topics.device("bad", "telemetry"), raw("bad", "NaN"))
        client.publish(topics.device("bad", "telemetry"), raw("bad", str(now), name="o" * 129))
        client.publish(topics.device("bad", "telemetry"), raw("bad", "1e999"))
        for i in range(5):
            client.publish(topics.device("good", "telemetry"), honest("good", now + i))
        wait_until(lambda: c.ingest.received >= 8 and c.ingest.flush(), 10, "the samples")
        assert c.stored("good") == 5 and c.stored("bad") == 0
        assert c.ingest.rejected == 3
        metrics = httpx.get(f"{c.url}/metrics").text
        assert 'edge_telemetry_messages_total{result="rejected"} 3' in metrics
    finally:
        client.close()
        c.stop()


def test_a_row_the_database_refuses_is_quarantined_alone(broker, tmp_path, prefix):
    c = Handle(broker, tmp_path / "c", prefix)
    with sqlite3.connect(tmp_path / "c" / "controller.db") as conn:  # any row-level failure: constraint, quota, ...
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON telemetry WHEN NEW.device_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
        )
    topics = Topics(prefix)
    client = Device(broker.port, None, None)
    try:
        now = time.time()
        c.ingest.batch = 100
        client.publish(topics.device("bad", "telemetry"), honest("bad", now))
        for i in range(5):
            client.publish(topics.device("good", "telemetry"), honest("good", now + i))
        wait_until(lambda: c.ingest.received >= 6 and c.ingest.flush(), 10, "the samples")
        assert c.stored("good") == 5
        assert c.ingest.quarantined == 1
        kept = c.bg.controller.db.quarantined("bad")
        assert len(kept) == 1 and "refused by the database" in kept[0]["reason"]
        assert 'edge_telemetry_messages_total{result="quarantined"} 1' in httpx.get(f"{c.url}/metrics").text
    finally:
        client.close()
        c.stop()


def test_an_oversized_publish_neither_drops_the_session_nor_flaps_presence(broker, tmp_path, prefix):
    c = Handle(broker, tmp_path / "c", prefix)
    topics = Topics(prefix)
    link = c.bg.controller.fleet.telemetry_link
    wait_until(link.connected.is_set, 10, "the telemetry subscription")
    watcher = Device(broker.port, None, None, subscribe=(topics.controller_presence,))
    client = Device(broker.port, None, None)
    try:
        wait_until(lambda: watcher.received, 10, "the controller's presence")
        for _ in range(2):
            client.publish(topics.device("evil", "telemetry"), b"x" * (3 << 20))
        client.publish(topics.device("good", "telemetry"), honest("good", time.time()))
        wait_until(lambda: c.stored("good") == 1, 10, "the honest sample after the oversized ones")
        assert link.oversized == 2 and link.sessions == 1
        presences = [decode(ControllerPresence, p).online for _, p in watcher.received]
        assert False not in presences, presences
    finally:
        client.close()
        watcher.close()
        c.stop()


def test_backoff_resets_after_a_successful_subscribe(tmp_path, prefix):
    from conftest import find_mosquitto, free_port
    from test_resilience import RestartableMosquitto

    binary = find_mosquitto()
    if not binary:
        pytest.skip("needs a mosquitto binary to restart")
    mosq = RestartableMosquitto(binary, tmp_path, free_port())
    mosq.start()
    c = Handle(mosq.broker, tmp_path / "c", prefix)
    link = c.bg.controller.fleet.telemetry_link
    try:
        for outage in range(4):
            wait_until(link.connected.is_set, 30, f"the subscription before outage {outage}")
            mosq.stop()
            wait_until(lambda: not link.connected.is_set(), 10, "the loss")
            mosq.start()
        wait_until(link.connected.is_set, 30, "the subscription after the outages")
        assert link.sessions == 5
        assert link.next_delay <= 1.5, link.next_delay  # without the reset: 8 s and growing
    finally:
        c.stop()
        mosq.stop()


def test_storage_is_bounded(broker, tmp_path, prefix):
    c = Handle(broker, tmp_path / "c", prefix, telemetry_retention_s=2.0)
    topics = Topics(prefix)
    client = Device(broker.port, None, None)
    try:
        now = time.time()
        # a sample dated in the year 3000 and one padded with 500 KB of unknown fields
        client.publish(topics.device("clock", "telemetry"), honest("clock", 32503680000.0))
        padded = json.loads(honest("pad", now))
        padded["junk"] = "x" * 500_000
        client.publish(topics.device("pad", "telemetry"), json.dumps(padded).encode())
        wait_until(lambda: c.ingest.received >= 2 and c.ingest.flush(), 10, "the samples")
        db = c.bg.controller.db
        with db.engine.connect() as conn:
            size = conn.execute(sa.select(sa.func.length(telemetry_table.c.payload)).where(
                telemetry_table.c.device_id == "pad")).scalar_one()  # fmt: skip
        assert size < 2000, size
        time.sleep(2.5)
        assert c.ingest.prune_now() == 2  # by receive time: the year-3000 sample goes too
        assert c.stored("clock") == 0
        # drift baselines: 100 messages with new versions of 32 models x 16 outputs each
        outputs = {f"o{j}": OutputStats(sampled=1, count=4, mean=0.5, std=0.1) for j in range(16)}
        for i in range(100):
            models = [ModelTelemetry(name=f"m{k}", version=f"v{i}", outputs=outputs) for k in range(32)]
            message = Telemetry(device_id="drifty", ts=now + i, models=models).encode()
            client.publish(topics.device("drifty", "telemetry"), message)
        wait_until(lambda: c.ingest.received >= 102 and c.ingest.flush(), 30, "the drift messages")
        baselines = len([b for b in db.drift_baselines() if b["device_id"] == "drifty"])
        print(f"drift baselines kept for 100 messages x 512 outputs: {baselines}")
        assert baselines == 512
        # history comes in pages
        presence = b'{"v":1,"kind":"presence","device_id":"chatty","online":true}'
        client.publish(topics.device("chatty", "presence"), presence)
        for i in range(1200):
            client.client.publish(topics.device("chatty", "telemetry"), honest("chatty", now - 1200 + i), qos=1)
        wait_until(lambda: c.stored("chatty") == 1200, 60, "1200 samples")
        page = httpx.get(f"{c.url}/api/v1/devices/chatty/telemetry", params={"since": "1d"}).json()
        assert len(page["samples"]) == 1000 and page["next_before"] == page["samples"][0]["ts"]
        rest = httpx.get(
            f"{c.url}/api/v1/devices/chatty/telemetry", params={"since": "1d", "before": page["next_before"]}
        ).json()
        assert len(rest["samples"]) == 200 and rest["next_before"] is None
        too_many = httpx.get(f"{c.url}/api/v1/devices/chatty/telemetry", params={"limit": 10_000})
        assert too_many.status_code == 422
    finally:
        client.close()
        c.stop()


def test_a_flooding_device_spends_only_its_own_budget(broker, tmp_path, prefix):
    c = Handle(broker, tmp_path / "c", prefix)
    c.ingest.budget = TelemetryBudget(rate=5, burst=50, byte_rate=64 << 10, byte_burst=1 << 20)
    topics = Topics(prefix)
    flood = Device(broker.port, None, None, client_id="flood")
    good = Device(broker.port, None, None, client_id="good")
    try:
        now = time.time()
        for i in range(2000):
            flood.client.publish(topics.device("flood", "telemetry"), honest("flood", now + i), qos=1)
        for i in range(20):
            good.publish(topics.device("good", "telemetry"), honest("good", now + i))
        wait_until(lambda: c.ingest.received >= 2020 and c.ingest.flush(), 60, "the flood")
        print(
            f"flood: {c.stored('flood')} of 2000 stored, {c.ingest.over_budget} over budget; good: {c.stored('good')}"
        )
        assert c.stored("good") == 20
        assert c.stored("flood") < 200 and c.ingest.over_budget > 1800
        assert 'result="over_budget"' in httpx.get(f"{c.url}/metrics").text
    finally:
        flood.close()
        good.close()
        c.stop()


def test_metrics_series_per_device_are_capped(controller, prefix):
    from protocol import DeviceState, ModelStatus

    topics = Topics(prefix)
    client = Device(int(controller.settings.broker.rsplit(":", 1)[1]), None, None)
    try:
        client.publish(topics.device("many", "presence"), b'{"v":1,"kind":"presence","device_id":"many","online":true}')
        wait_until(lambda: any(d["id"] == "many" for d in controller.client.devices()), 10, "the device")
        models = [
            ModelStatus(
                name=f"m{i}",
                version="1",
                sha256="0" * 64,
                state="serving",
                serving={"version": "1", "sha256": "0" * 64, "backend": "onnxruntime"},
            )
            for i in range(2500)
        ]
        client.publish(topics.device("many", "state"), DeviceState(device_id="many", models=models).encode())
        wait_until(lambda: len(controller.device("many").get("models") or []) >= 2500, 10, "the state")
        text = httpx.get(f"{controller.url}/metrics").text
        series = [line for line in text.splitlines() if 'device="many"' in line]
        print(f"/metrics series for a device reporting 2500 models: {len(series)}")
        assert len([s for s in series if s.startswith("edge_model_info")]) == 32
        assert len(series) <= 40
    finally:
        client.close()
