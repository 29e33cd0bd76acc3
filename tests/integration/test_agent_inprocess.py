"""The agent built in-process (its hardware probed once for the module, no controller) against the test broker and
real runtimes: a desired state over MQTT deploys a model whose artifact is in the store, a version answering NaN in
its health window is rolled back to the one before, and a serving backend that starts failing hands its requests to
the trial's runner-up, with the status saying so."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import free_port, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_rollback import nan_for_large_inputs

from agent.config import AgentConfig
from agent.deploy.deployer import failure_code
from agent.fetch.fetcher import FetchError
from agent.fetch.store import VerifyError
from agent.service import Agent
from edgectl.sample_models import mlp
from protocol import Desired, DesiredModel, Topics
from targets.base import BackendError
from targets.failover import FailoverBackend
from targets.probe import probe


@pytest.fixture(scope="module")
def hardware() -> dict:
    return probe()


class Device:
    """An in-process agent, a client publishing its desired state, and the last DeviceState it published (as JSON)."""

    def __init__(self, agent: Agent, broker_port: int, topics: Topics) -> None:
        self.agent = agent
        self.topics = topics
        self.state: dict = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        state_topic = topics.device("dev1", "state")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(state_topic, 1)
        self.client.on_message = lambda c, u, message: self._update(message.payload)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self.generation = 0

    def _update(self, payload: bytes) -> None:
        if payload:
            self.state = json.loads(payload)

    def put(self, path: Path) -> tuple[str, int]:
        """The model file in the agent's store, as if it had been downloaded."""
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        shutil.copy(path, self.agent.store.path(sha))
        return sha, len(data)

    def desire(self, version: str, path: Path) -> str:
        """Publish a desired state serving `path` as model m `version`; its sha256."""
        sha, size = self.put(path)
        self.generation += 1
        desired = Desired(
            device_id="dev1",
            generation=self.generation,
            models=[DesiredModel(name="m", version=version, sha256=sha, size=size)],
        )
        self.client.publish(self.topics.device("dev1", "desired"), desired.encode(), qos=1).wait_for_publish(5)
        return sha

    def model(self, check: Callable[[dict], bool], message: str, timeout: float = 60) -> dict:
        """Wait for the published status of model m to pass `check` (and the last desired state to be seen)."""

        def seen() -> dict | None:
            entry = next((m for m in self.state.get("models", []) if m["name"] == "m"), None)
            return entry if entry and self.state["generation"] == self.generation and check(entry) else None

        return wait_until(seen, timeout, message)

    def infer(self, x: np.ndarray) -> httpx.Response:
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        return httpx.post(f"{self.agent.api.url}/v2/models/m/infer", json=body, timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def device(broker, prefix, tmp_path, hardware) -> Iterator[Device]:
    config = AgentConfig(
        device_id="dev1",
        broker=broker.url,
        topic_prefix=prefix,
        data_dir=tmp_path / "agent",
        api=f"127.0.0.1:{free_port()}",
        trial_isolated=False,  # the trial's runtimes in this process: quicker, and as real
        trial_budget_s=0.5,
        health_window_s=60,
    )
    agent = Agent(config, hardware=hardware)
    agent.start()
    assert agent.link.wait_connected(10)
    handle = Device(agent, broker.port, Topics(prefix))
    yield handle
    handle.close()
    agent.stop()


def serving(sha: str) -> Callable[[dict], bool]:
    return lambda m: m["state"] == "serving" and m["sha256"] == sha and m["serving"]["sha256"] == sha


def test_deploys_then_rolls_back_a_version_answering_nan(device, tmp_path):
    v1 = device.desire("1", mlp(tmp_path / "v1.onnx", seed=61))
    device.model(serving(v1), "version 1 to serve")
    x = np.ones((1, 16), np.float32)
    first = device.infer(x)
    assert first.status_code == 200 and first.json()["model_version"] == "1"

    v2 = device.desire("2", nan_for_large_inputs(tmp_path / "nan.onnx"))
    entry = device.model(serving(v2), "version 2 to serve")
    assert entry["previous"]["sha256"] == v1 and device.agent.rollback.standby("m").version == "1"
    assert device.infer(x).json()["model_version"] == "2"  # finite: the health window sees nothing wrong
    assert device.infer(np.full((1, 16), 20.0, np.float32)).status_code == 200  # answered, but NaN

    entry = device.model(lambda m: m["state"] == "failed", "the rollback to show", timeout=10)
    assert entry["sha256"] == v2 and entry["reason"]["code"] == "rolled_back"
    assert "NaN/Inf" in entry["reason"]["message"] and entry["serving"]["sha256"] == v1
    assert device.infer(x).json()["model_version"] == "1"
    assert device.agent.rollback.standby("m") is None
    assert "NaN/Inf" in device.agent.store.rejection("m", v2).reason

    device.desire("2", tmp_path / "nan.onnx")  # the same version again: refused at once, never loaded
    entry = device.model(lambda m: m["state"] == "failed", "the refusal to show", timeout=10)
    assert entry["reason"]["code"] == "rolled_back" and device.agent.table.current("m").version == "1"


def test_a_failing_backend_fails_over_and_the_status_says_so(device, tmp_path):
    pytest.importorskip("openvino")  # the trial's runner-up: ONNX Runtime and OpenVINO both run the model on a CPU
    sha = device.desire("1", mlp(tmp_path / "m.onnx", seed=62))
    device.model(serving(sha), "the model to serve")
    backend = device.agent.table.current("m").backend
    assert isinstance(backend, FailoverBackend), "the trial found one working backend only"
    preferred = backend.chain[0]
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    expected = preferred.backend.infer({"x": x})["probs"]

    lost = threading.Event()
    real_infer = preferred.backend.infer

    def losable(inputs):
        if lost.is_set():
            raise BackendError("device lost")
        return real_infer(inputs)

    preferred.backend.infer = losable
    lost.set()
    for _ in range(backend.max_failures + 1):
        response = device.infer(x)
        assert response.status_code == 200, response.text
        got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    failover = device.model(lambda m: (m.get("failover") or {}).get("failed_over"), "failover in the status")[
        "failover"
    ]
    assert failover["preferred"] == preferred.name and failover["active"] != preferred.name
    assert failover["failovers"] == 1 and "device lost" in failover["reason"]
    assert device.agent.table.current("m").watch.problem is None  # every request was served: nothing to roll back

    lost.clear()
    assert backend.recheck()
    failover = device.model(lambda m: m["failover"]["failed_over"] is False, "re-promotion in the status")["failover"]
    assert failover["active"] == preferred.name and "re-promoted" in failover["reason"]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FetchError("controller sent 3 bytes of a 9-byte artifact", "size_mismatch"), "size_mismatch"),
        (FetchError("controller: gone"), "fetch_failed"),
        (VerifyError("sha256 mismatch"), "hash_mismatch"),
        (BackendError("no runtime loads it"), "load_failed"),
        (OSError("disk full"), "deploy_failed"),
    ],
)
def test_a_failed_deployment_reports_its_errors_code(exc, code):
    assert failure_code(exc) == code
