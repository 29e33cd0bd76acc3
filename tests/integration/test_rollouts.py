"""Fleet rollouts with real agents, real traffic and the controller's own engine: a version whose answers disagree
stops after wave 1 (its devices back on the previous version, the rest never receive it), a good version completes
no faster than its bakes, no traffic is inconclusive (paused, never a pass), abort reverts at once, and a device
that dies in its wave fails activation by the deadline. Short bakes and small --min-requests keep it quick."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
from conftest import wait_model_state, wait_until
from typer.testing import CliRunner

from edgectl.cli import app

AGENT_CONFIG = "telemetry_interval_s = 1.0\nshadow_window_s = 2.0\nshadow_pairs = 10\n"
FAST = ["--bake", "3", "--min-requests", "20", "--max-p95-ratio", "5", "--activate-timeout", "60", "--seed", "1"]


class Traffic:
    """Clients sending inferences to each agent's API until stopped (~25 requests/s per agent)."""

    def __init__(self, agents) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(a,), daemon=True) for a in agents]
        for t in self.threads:
            t.start()

    def _run(self, agent) -> None:
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    client.post(f"{agent.api}/v2/models/m/infer", json=body)
                    self.sent += 1
                except httpx.HTTPError:
                    pass
                self.stop.wait(0.04)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def edgectl(controller, *args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--controller", controller.url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def same_answers(source, path):
    """The same model under other bytes: a good new version (its answers agree with the old)."""
    model = onnx.load(str(source))
    model.doc_string = "version 2: same weights"
    onnx.save(model, str(path))
    return path


def fleet(controller, start_agent, model, n=4):
    agents = [start_agent(f"cam-{i}", config=AGENT_CONFIG, wait_online=controller) for i in range(n)]
    record = controller.client.upload_model(model, "m", "1")
    controller.client.deploy("m", "1", [a.device_id for a in agents])
    for a in agents:
        wait_model_state(controller, a.device_id, "m", record["sha256"], {"serving"}, timeout=60)
    return agents


def serving(controller, device_id):
    for entry in controller.device(device_id)["models"]:
        if entry["name"] == "m":
            return (entry.get("serving") or {}).get("version")
    return None


def wait_state(controller, rollout_id, states, timeout=90):
    return wait_until(
        lambda: (r := controller.client.rollout(rollout_id))["state"] in states and r, timeout, f"rollout in {states}"
    )


def events_are_contiguous(controller, rollout_id) -> list[dict]:
    events = controller.client.rollout_events(rollout_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def test_a_version_that_disagrees_stops_after_wave_1_and_its_devices_go_back(
    controller, start_agent, mlp_model, mlp_model_v2
):
    agents = fleet(controller, start_agent, mlp_model)
    traffic = Traffic(agents)
    try:
        rollout = edgectl(controller, "rollout", "start", str(mlp_model_v2), "--name", "m", "--version", "2",
                          "--waves", "1,50%,100%", "--min-agreement", "0.9", *FAST)  # fmt: skip
        assert rollout["state"] == "planned" and len(rollout["waves"]) == 3
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"})
        assert done["state"] == "halted", done["reason"]
        wave1 = done["waves"][0]
        ((hw_class, gates),) = wave1["classes"].items()
        assert wave1["state"] == "failed" and "agreement" in gates["failed_gates"], gates
        assert gates["agreement"]["agreement"] < 0.9 and gates["agreement"]["pairs"] > 0
        (first,) = wave1["devices"]
        wait_until(lambda: serving(controller, first) == "1", 30, "the wave-1 device back on version 1")
        for other in {a.device_id for a in agents} - {first}:
            assert serving(controller, other) == "1"
            assert controller.bg.controller.db.get_deployment(other, "m")["version"] == "1"
            assert all(e["version"] == "1" for e in controller.device(other)["models"])
        kinds = [e["kind"] for e in events_are_contiguous(controller, rollout["id"])]
        assert kinds[:3] == ["created", "started", "wave_started"] and kinds[-1] == "wave_failed"
        assert kinds.count("wave_started") == 1
    finally:
        traffic.close()


def test_a_good_version_completes_no_faster_than_its_bakes(controller, start_agent, mlp_model, tmp_path):
    agents = fleet(controller, start_agent, mlp_model)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    traffic = Traffic(agents)
    try:
        rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2",
                          "--waves", "1,100%", "--min-agreement", "0.9", *FAST)  # fmt: skip
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=120)
        assert done["state"] == "completed", done["reason"]
        for wave in done["waves"]:
            assert wave["state"] == "passed"
            for gates in wave["classes"].values():
                assert gates["evidence"]["devices_with_min_requests"] >= gates["evidence"]["needed"]
                assert gates["agreement"]["agreement"] >= 0.9
        events = events_are_contiguous(controller, rollout["id"])
        activated = [e["ts"] for e in events if e["kind"] == "activated"]
        passed = [e["ts"] for e in events if e["kind"] == "wave_passed"]
        assert len(activated) == len(passed) == 2
        assert all(p - a >= 3.0 for a, p in zip(activated, passed, strict=True))  # each wave baked its 3 s
        for a in agents:
            wait_until(lambda a=a: serving(controller, a.device_id) == "2", 30, f"{a.device_id} on version 2")
    finally:
        traffic.close()


def test_no_traffic_is_inconclusive_then_paused_and_abort_reverts_at_once(controller, start_agent, mlp_model, tmp_path):
    agents = fleet(controller, start_agent, mlp_model, n=4)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2",
                      "--waves", "1,100%", "--bake", "2", *FAST[2:])  # fmt: skip
    paused = wait_state(controller, rollout["id"], {"paused", "completed", "halted"})
    assert paused["state"] == "paused" and "inconclusive" in paused["reason"]
    kinds = [e["kind"] for e in events_are_contiguous(controller, rollout["id"])]
    assert kinds.count("bake_extended") == 1 and kinds[-1] == "paused" and "wave_passed" not in kinds
    (first,) = paused["waves"][0]["devices"]
    wait_until(lambda: serving(controller, first) == "2", 30, "the wave-1 device on version 2")
    assert all(serving(controller, a.device_id) == "1" for a in agents if a.device_id != first)

    started = time.monotonic()
    aborted = edgectl(controller, "rollout", "abort", rollout["id"])
    took = time.monotonic() - started
    assert aborted["state"] == "aborted" and took < 1.0
    assert controller.bg.controller.db.get_deployment(first, "m")["version"] == "1"  # desired again, published
    wait_until(lambda: serving(controller, first) == "1", 30, "the aborted device back on version 1")
    assert events_are_contiguous(controller, rollout["id"])[-1]["data"]["reverted"] == [first]


def test_a_device_killed_in_its_wave_fails_activation_by_the_deadline(controller, start_agent, mlp_model, tmp_path):
    agents = fleet(controller, start_agent, mlp_model, n=2)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    agents[1].kill()
    rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2", "--waves", "100%",
                      "--bake", "2", "--min-requests", "1", "--activate-timeout", "6")  # fmt: skip
    started = time.monotonic()
    done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=60)
    assert done["state"] == "halted" and time.monotonic() - started < 30
    (gates,) = done["waves"][0]["classes"].values()
    assert "activation" in gates["failed_gates"]
    assert "within 6 s" in gates["activation"]["failed"][agents[1].device_id]


@pytest.fixture(autouse=True)
def _fast_join(monkeypatch):
    """Late joiners looked for every second (the default 5 s would only slow these tests)."""
    monkeypatch.setattr("controller.rollouts.engine.JOIN_EVERY_S", 1.0)


def test_an_agent_restarted_while_serving_the_new_version_is_harm_with_its_evidence(
    controller, start_agent, mlp_model, tmp_path
):
    """SIGKILL and restart the wave-1 agent while it bakes: its telemetry `seq` starts again while it serves the new
    version, the not-yet-updated agents of its class did not restart in that period, so the restart is the
    version's: the wave fails on harm, the event carries the restart's evidence, the device goes back."""
    agents = fleet(controller, start_agent, mlp_model, n=3)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    traffic = Traffic(agents)
    try:
        rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2",
                          "--waves", "1,100%", *FAST[2:], "--bake", "15")  # fmt: skip
        baking = wait_until(lambda: (r := controller.client.rollout(rollout["id"]))["phase"] == "baking" and r, 60,
                            "wave 1 baking")  # fmt: skip
        (first,) = baking["waves"][0]["devices"]
        agent = next(a for a in agents if a.device_id == first)
        time.sleep(3.0)  # a few telemetry windows on version 2 first
        agent.kill()
        agent.start()
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=90)
        assert done["state"] == "halted", done["reason"]
        (gates,) = done["waves"][0]["classes"].values()
        assert gates["failed_gates"] == ["harm"], gates
        harm = gates["harm"]
        assert harm["restarts_attributed"] and harm["peers_seen"] == 2 and harm["peer_restarts"] == {}
        assert "restarted (telemetry seq" in harm["devices"][first] and first in harm["restarts"]
        assert f"harm on {first} (restarted (telemetry seq" in done["reason"]
        failed = events_are_contiguous(controller, rollout["id"])[-1]
        assert failed["kind"] == "wave_failed" and failed["data"]["reverted"] == [first]
        wait_until(lambda: serving(controller, first) == "1", 30, "the restarted device back on version 1")
        assert all(serving(controller, a.device_id) == "1" for a in agents if a.device_id != first)
    finally:
        traffic.close()


def test_a_restart_the_not_yet_updated_agents_share_is_recorded_not_blamed_on_the_version(
    controller, start_agent, mlp_model, tmp_path
):
    """The wave-1 agent and both not-yet-updated agents SIGKILLed and restarted in the same period (a power cut):
    the restart is recorded in the wave's harm figures with its evidence but not attributed; the rollout completes."""
    agents = fleet(controller, start_agent, mlp_model, n=3)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    traffic = Traffic(agents)
    try:
        rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2",
                          "--waves", "1,100%", *FAST[2:], "--bake", "15")  # fmt: skip
        wait_until(lambda: controller.client.rollout(rollout["id"])["phase"] == "baking", 60, "wave 1 baking")
        time.sleep(3.0)
        for agent in agents:
            agent.kill()
        for agent in agents:
            agent.start()
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=120)
        assert done["state"] == "completed", done["reason"]
        (first,) = done["waves"][0]["devices"]
        (gates,) = done["waves"][0]["classes"].values()
        harm = gates["harm"]
        assert harm["verdict"] == "pass" and not harm["restarts_attributed"], harm
        assert "restarted (telemetry seq" in harm["restarts"][first] and len(harm["peer_restarts"]) == 2
        assert harm["peer_restart_share"] == 1.0 and harm["restart_share"] == 1.0
    finally:
        traffic.close()


def test_a_device_killed_after_its_wave_started_fails_activation_by_the_deadline(
    controller, start_agent, mlp_model, tmp_path
):
    """SIGKILL one agent as soon as its wave has started (the new version pushed; the shadow check holds the swap for
    shadow_window_s = 2 s of live traffic, so it cannot be serving yet): it never reports serving the new version,
    fails activation by the deadline and the rollout halts; the other device is reverted."""
    agents = fleet(controller, start_agent, mlp_model, n=2)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    traffic = Traffic(agents)
    try:
        rollout = edgectl(controller, "rollout", "start", str(good), "--name", "m", "--version", "2", "--waves",
                          "100%", "--bake", "2", "--min-requests", "1", "--activate-timeout", "8",
                          "--max-p95-ratio", "5")  # fmt: skip
        wait_until(lambda: controller.client.rollout(rollout["id"])["phase"] == "activating", 30, "the wave started",
                   poll=0.02)  # fmt: skip
        agents[1].kill()
        started = time.monotonic()
        done = wait_state(controller, rollout["id"], {"halted", "completed", "paused"}, timeout=60)
        assert done["state"] == "halted" and time.monotonic() - started < 30, done["reason"]
        (gates,) = done["waves"][0]["classes"].values()
        assert "activation" in gates["failed_gates"], gates
        assert list(gates["activation"]["failed"]) == [agents[1].device_id]
        assert "within 8 s" in gates["activation"]["failed"][agents[1].device_id]
        wait_until(lambda: serving(controller, agents[0].device_id) == "1", 30, "the live device back on version 1")
    finally:
        traffic.close()
