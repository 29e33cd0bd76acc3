"""The rollout drift gate (--no-new-drift) with real agents: a version whose class mix differs from the previous
version's on the same devices (two MLPs with different weights, the same inputs) fails wave 1 naming the device and
what moved, and its device goes back to the previous version; the rest never receive it."""

from __future__ import annotations

import contextlib
import json
import threading

import httpx
import numpy as np
from conftest import wait_model_state, wait_until
from test_rollouts import edgectl, serving, wait_state

# every request summarised (no time budget): a baseline of 400 rows needs a few batched requests
AGENT_CONFIG = (
    "telemetry_interval_s = 0.5\ntelemetry_sample_every = 1\ntelemetry_budget_us = 0\nshadow_window_s = 2.0\n"
)
FAST = ["--bake", "5", "--min-requests", "5", "--max-p95-ratio", "50", "--max-error-delta", "100",
        "--activate-timeout", "60", "--seed", "1"]  # fmt: skip


class BatchTraffic:
    """Batches of 64 random rows to each agent (~10 requests/s per agent) until stopped."""

    def __init__(self, agents) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(a, i), daemon=True) for i, a in enumerate(agents)]
        for t in self.threads:
            t.start()

    def _run(self, agent, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                x = rng.standard_normal((64, 16)).astype(np.float32)
                body = {"inputs": [{"name": "x", "shape": [64, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{agent.api}/v2/models/m/infer", json=body)
                self.stop.wait(0.1)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def frozen(controller, device_id: str) -> bool:
    """The device's baseline of its current version is built (the drift view's state is past 'building')."""
    data = edgectl(controller, "drift", "show", device_id)
    state = (data["models"].get("m") or {}).get("state", "")
    return bool(state) and not state.startswith("building")


def test_a_version_whose_class_mix_moved_fails_the_drift_gate_naming_the_device(
    controller, start_agent, mlp_model, mlp_model_v2
):
    agents = [start_agent(f"cam-{i}", config=AGENT_CONFIG, wait_online=controller) for i in range(2)]
    record = controller.client.upload_model(mlp_model, "m", "1")
    controller.client.deploy("m", "1", [a.device_id for a in agents])
    for a in agents:
        wait_model_state(controller, a.device_id, "m", record["sha256"], {"serving"}, timeout=60)
    traffic = BatchTraffic(agents)
    try:
        for a in agents:
            wait_until(lambda a=a: frozen(controller, a.device_id), 60, f"{a.device_id}: version 1's baseline")
        rollout = edgectl(controller, "rollout", "start", str(mlp_model_v2), "--name", "m", "--version", "2",
                          "--waves", "1,100%", "--no-new-drift", *FAST)  # fmt: skip
        assert rollout["spec"]["no_new_drift"] is True
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=60)
        assert done["state"] == "halted", done["reason"]
        wave1 = done["waves"][0]
        ((_, gates),) = wave1["classes"].items()
        (first,) = wave1["devices"]
        assert wave1["state"] == "failed" and gates["failed_gates"] == ["drift"], json.dumps(gates)[:2000]
        assert list(gates["drift"]["drifted"]) == [first] and "class mix of probs" in gates["drift"]["drifted"][first]
        assert f"drift on {first}" in done["reason"]
        wait_until(lambda: serving(controller, first) == "1", 30, "the wave-1 device back on version 1")
        (other,) = {a.device_id for a in agents} - {first}
        assert serving(controller, other) == "1"
    finally:
        traffic.close()
