"""Trust under failure: the broker disappears, and a new version rolls out under load."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import (
    Broker,
    ControllerHandle,
    _port_open,
    find_mosquitto,
    free_port,
    wait_model_state,
    wait_until,
)

from edgectl.sample_models import mlp


class RestartableMosquitto:
    """A Mosquitto of this test's own, stopped and started again on the same port."""

    def __init__(self, binary: str, directory, port: int) -> None:
        self.binary, self.conf, self.port = binary, directory / "mosquitto.conf", port
        self.conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        wait_until(lambda: _port_open(self.port), 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def broker(self) -> Broker:
        return Broker(f"mqtt://127.0.0.1:{self.port}", self.port, "mosquitto", self.stop)


def infer_ok(agent, model: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port, timeout=5)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    conn.request("POST", f"/v2/models/{model}/infer", body)
    ok = conn.getresponse().status == 200
    conn.close()
    return ok


def test_broker_loss_keeps_serving_then_reconciles(tmp_path, prefix, model_dir):
    binary = find_mosquitto()
    if not binary:
        pytest.skip("needs a mosquitto binary to stop and restart a broker")
    mosq = RestartableMosquitto(binary, tmp_path, free_port())
    mosq.start()
    controller = ControllerHandle(mosq.broker, tmp_path / "controller", prefix)
    from conftest import AgentProcess

    config = tmp_path / "agent.toml"
    config.write_text(f'topic_prefix = "{prefix}"\n')
    port = free_port()
    args = ["--config", str(config), "--broker", mosq.broker.url, "--device-id", "dev1",
            "--data-dir", str(tmp_path / "agent"), "--api", f"127.0.0.1:{port}"]  # fmt: skip
    agent = AgentProcess("dev1", tmp_path / "agent", port, args, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: controller.client.devices() and controller.device("dev1")["online"], 20, "dev1 online")
        v1 = controller.client.upload_model(mlp(model_dir / "nl1.onnx", seed=21), "mlp", None)
        controller.client.deploy("mlp", v1["version"], ["dev1"])
        wait_model_state(controller, "dev1", "mlp", v1["sha256"], {"serving"})

        mosq.stop()
        served = sum(infer_ok(agent, "mlp") for _ in range(50))
        assert served == 50  # local inference does not need the network
        v2 = controller.client.upload_model(mlp(model_dir / "nl2.onnx", seed=22), "mlp", None)
        controller.client.deploy("mlp", v2["version"], ["dev1"])  # desired changes while the device is cut off
        time.sleep(2)
        assert infer_ok(agent, "mlp")

        mosq.start()
        wait_model_state(controller, "dev1", "mlp", v2["sha256"], {"serving"}, timeout=60)
        assert agent.metadata("mlp")["versions"] == [v2["version"]]
        logs = agent.logs()
        assert "lost connection to broker" in logs and logs.count("connected to mqtt://") >= 2
    finally:
        agent.kill()
        controller.stop()
        mosq.stop()


class LoadGenerator:
    """Keep-alive clients hammering the v2 API; records every request's outcome, latency and model version."""

    def __init__(self, port: int, model: str, threads: int = 2) -> None:
        self.port, self.model = port, model
        self.results: list[tuple[float, float, int, str]] = []  # (start, latency ms, status, version)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> LoadGenerator:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("POST", f"/v2/models/{self.model}/infer", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                version = json.loads(payload).get("model_version", "") if response.status == 200 else ""
                self.results.append((start, (time.perf_counter() - start) * 1000, response.status, version))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def test_zero_failed_requests_during_an_update(controller, start_agent, model_dir):
    # two models of one shape: a latency gap between them is the loaded 2-core machine (seen once in a full run:
    # p50 5.1 vs 2.3 ms, twice in a row), not the new version; this test is about failed requests
    agent = start_agent("dev1", config="rollback_latency_pct = 400\n", wait_online=controller)
    v1 = controller.client.upload_model(mlp(model_dir / "load1.onnx", seed=31, pad_mb=20), "big", None)
    controller.client.deploy("big", v1["version"], ["dev1"])
    wait_model_state(controller, "dev1", "big", v1["sha256"], {"serving"}, timeout=60)
    v2 = controller.client.upload_model(mlp(model_dir / "load2.onnx", seed=32, pad_mb=20), "big", None)

    with LoadGenerator(agent.api_port, "big") as load:
        time.sleep(1.0)
        update_start = time.perf_counter()
        controller.client.deploy("big", v2["version"], ["dev1"])
        entry = wait_model_state(controller, "dev1", "big", v2["sha256"], {"serving", "failed"}, timeout=60)
        assert entry["state"] == "serving", entry["reason"]
        update_end = time.perf_counter()
        time.sleep(1.0)

    failed = [r for r in load.results if r[2] != 200]
    before = [r[1] for r in load.results if r[0] < update_start]
    during = [r[1] for r in load.results if update_start <= r[0] <= update_end]
    versions = {r[3] for r in load.results}
    print(
        f"\nupdate under load: {len(load.results)} requests, {len(failed) + len(load.errors)} failed; "
        f"p50 before {statistics.median(before):.2f} ms, during update p50 {statistics.median(during):.2f} ms "
        f"max {max(during):.2f} ms over {update_end - update_start:.2f} s"
    )
    assert not load.errors, load.errors[:3]
    assert not failed, failed[:3]
    shadow = entry["shadow"]  # judged beside version 1 on copies of the live requests
    assert shadow["inputs"] == "live" and shadow["verdict"] == "passed" and shadow["pairs"] >= 8, shadow
    assert shadow["agreement"] == 0.0  # another seed: different answers, reported and not held against it
    assert versions == {v1["version"], v2["version"]}  # it really switched while serving
    assert len(during) > 10
    assert np.isfinite(max(during))
