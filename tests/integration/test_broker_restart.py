"""The broker restarts in the middle of a push: downloads resume where their bytes stop, over MQTT (chunks asked for
again after the reconnect) and over HTTP (the download never needed the broker), and the model lands intact."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from conftest import SettingsController, find_mosquitto, free_port, wait_model_state, wait_until
from test_http_models import Origin, stored_intact
from test_resilience import RestartableMosquitto

from edgectl.sample_models import mlp


@pytest.fixture
def mosquitto(tmp_path):
    binary = find_mosquitto()
    if not binary:
        pytest.skip("needs a mosquitto binary to stop and restart a broker")
    mosq = RestartableMosquitto(binary, tmp_path, free_port())
    mosq.start()
    yield mosq
    mosq.stop()


@pytest.fixture
def broker(mosquitto):
    """This module's broker for conftest's start_agent: the one the test restarts."""
    return mosquitto.broker


class PartialWatch:
    """Samples the size of a partial download every few ms: a resumed download only ever grows."""

    def __init__(self, path) -> None:
        self.path, self.sizes = path, [0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(FileNotFoundError):
                self.sizes.append(self.path.stat().st_size)

    def close(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.sizes


def restart_mid_download(mosq: RestartableMosquitto, part, size: int, down_s: float = 2.0) -> int:
    """Kill the broker once a tenth of the file is here, start it again `down_s` later; the bytes at the kill."""
    wait_until(
        lambda: part.exists() and size // 10 < part.stat().st_size < size * 4 // 5, 60, "download under way", poll=0.005
    )
    mosq.stop()
    at_kill = part.stat().st_size
    time.sleep(down_s)
    mosq.start()
    return at_kill


def test_mqtt_download_resumes_after_a_broker_restart(mosquitto, start_agent, tmp_path, prefix, model_dir):
    controller = SettingsController(mosquitto.broker, tmp_path / "controller", prefix)  # no public URL: MQTT only
    try:
        # one 16 KiB chunk in flight at a time: slow enough for the restart to land mid-download
        agent = start_agent("dev1", config="chunk_bytes = 16384\ndownload_window = 1\n", wait_online=controller)
        model = mlp(model_dir / "mqtt-big.onnx", pad_mb=40, seed=41)
        record = controller.client.upload_model(model, "big", None)
        part = agent.data_dir / "store" / "partial" / f"{record['sha256']}.part"
        watch = PartialWatch(part)
        controller.client.deploy("big", record["version"], ["dev1"])
        at_kill = restart_mid_download(mosquitto, part, record["size"])
        wait_model_state(controller, "dev1", "big", record["sha256"], {"serving"}, timeout=90)
        sizes = watch.close()
    finally:
        controller.stop()
    assert 0 < at_kill < record["size"]
    assert all(b >= a for a, b in zip(sizes, sizes[1:])), "the partial file shrank: the download started over"
    logs = agent.logs()
    assert "lost connection to broker" in logs and logs.count("connected to mqtt://") >= 2
    assert "falling back to 3.1.1" not in logs  # Mosquitto answered MQTT 5 before the restart: it still does after
    assert stored_intact(agent, record["sha256"]) and not part.exists()


def test_http_download_carries_on_through_a_broker_restart(mosquitto, start_agent, tmp_path, prefix, model_dir):
    origin = Origin(tmp_path / "origin", rate=4 << 20)  # 4 MiB/s: the restart lands mid-download
    controller = SettingsController(mosquitto.broker, tmp_path / "controller", prefix, artifact_base_url=origin.url)
    try:
        agent = start_agent("dev1", wait_online=controller)
        model = mlp(model_dir / "http-big.onnx", pad_mb=16, seed=42)
        record = controller.client.upload_model(model, "big", None)
        origin.add(model, record["sha256"])
        part = agent.data_dir / "store" / "partial" / f"{record['sha256']}.part"
        controller.client.deploy("big", record["version"], ["dev1"])
        at_kill = restart_mid_download(mosquitto, part, record["size"])
        wait_model_state(controller, "dev1", "big", record["sha256"], {"serving"}, timeout=90)
    finally:
        controller.stop()
        origin.close()
    assert 0 < at_kill < record["size"]
    assert [(e["status"], e["sent"]) for e in origin.log] == [(200, record["size"])]  # one GET, never started over
    assert "lost connection to broker" in agent.logs() and "falling back to 3.1.1" not in agent.logs()
    assert stored_intact(agent, record["sha256"]) and not part.exists()
