"""The telemetry reader's pacing against a real broker: with Mosquitto's default in-flight window (20 unacknowledged
messages per client) the broker waits for PUBACKs, which wait for the commit; the reader's drained signal must
commit at once instead of the writer lingering (Mosquitto 2.0 holds back the first window's worth, later many more,
so a writer that lingers stores the last samples a linger or more late)."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from conftest import find_mosquitto, start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from controller.db.database import Database
from controller.telemetry.ingest import TelemetryIngest
from controller.telemetry.subscriber import TelemetrySubscriber
from protocol import Telemetry, Topics
from protocol.link import BrokerAddress

SAMPLES = 600
RATE = 300  # samples/s
LINGER_S = 2.0  # far longer than a pause and a commit


@pytest.fixture
def small_window_broker(tmp_path):
    """Mosquitto with its default window spelled out: 20 QoS 1 messages in flight per client."""
    binary = find_mosquitto()
    if not binary:
        pytest.skip("needs Mosquitto")
    proc, port = start_mosquitto(binary, tmp_path, "max_inflight_messages 20\n")
    yield port
    proc.terminate()
    proc.wait(10)


def test_a_small_in_flight_window_commits_on_the_drained_signal(small_window_broker, prefix, tmp_path):
    port = small_window_broker
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    ingest = TelemetryIngest(db, linger_s=LINGER_S)
    ingest.start()
    topics = Topics(prefix)

    def on_batch(batch, done):
        items = [(parsed[0], payload) for topic, payload in batch if (parsed := topics.parse(topic))]
        ingest.submit_many(items, done)

    reader = TelemetrySubscriber(
        BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), f"{prefix}-reader", topics.all_devices("telemetry"), on_batch,
        on_idle=ingest.idle,
    )  # fmt: skip
    reader.start()
    assert reader.connected.wait(10)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub")
    publisher.max_inflight_messages_set(SAMPLES)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        started = time.monotonic()
        now = time.time()
        sent = []
        for i in range(SAMPLES):  # a steady fleet: the window, not a backlog, sets the pace
            sample = Telemetry(device_id=f"d{i % 50}", ts=now + i).encode()
            sent.append(publisher.publish(topics.device(f"d{i % 50}", "telemetry"), sample, 1))
            time.sleep(max(0.0, started + (i + 1) / RATE - time.monotonic()))
        last_sent = time.monotonic()  # on a busy box the sending itself may run late: the wait is timed from here
        for info in sent:
            info.wait_for_publish(10)
        deadline = started + 20
        while ingest.stored < SAMPLES and time.monotonic() < deadline:
            time.sleep(0.05)
        took, after = time.monotonic() - started, time.monotonic() - last_sent
        assert ingest.stored == SAMPLES, f"{ingest.stored}/{SAMPLES} stored in {took:.1f} s"
        # the last sample is stored a pause and a commit after it was sent, not a linger (2 s) or more
        assert after < LINGER_S / 2, (
            f"the last of {SAMPLES} samples (sent in {last_sent - started:.1f} s) stored {after:.1f} s after it was"
            " sent"
        )
        assert db.count_telemetry() == SAMPLES
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        reader.stop()
        ingest.stop()
        db.close()
