"""SIGKILL the agent at many points of a deployment: after each restart it serves a verified model at once, the store
holds no file it treats as good that fails its hash, and the deployment completes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
from conftest import model_state, wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgectl.sample_models import mlp
from protocol import DeviceState, Topics, decode


class KillOnState:
    """Watches the device's state topic and SIGKILLs the agent the moment the target version enters `state`."""

    def __init__(self, broker, prefix: str, device_id: str) -> None:
        self.topic = Topics(prefix).device(device_id, "state")
        self.armed: tuple[str, str, int] | None = None  # (sha256, state, pid)
        self.fired = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, 1)  # resubscribe on reconnect too
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def arm(self, sha256: str, state: str, pid: int) -> None:
        self.fired.clear()
        self.armed = (sha256, state, pid)

    def _on_message(self, client, userdata, message) -> None:
        if not self.armed or not message.payload:
            return
        sha256, state, pid = self.armed
        for model in decode(DeviceState, message.payload).models:
            if model.sha256 == sha256 and model.state == state:
                self.armed = None
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    return  # already gone: not a kill at this point
                self.fired.set()

    def close(self) -> None:
        self.client.loop_stop()


def check_store(data_dir) -> dict:
    """Every object hashes to its name; the records parse and point at objects that exist."""
    store = data_dir / "store"
    for obj in (store / "objects").iterdir():
        try:
            data = obj.read_bytes()
        except FileNotFoundError:
            continue  # removed by the agent's retention while we looked: gone is fine, corrupt is not
        assert hashlib.sha256(data).hexdigest() == obj.name, f"corrupt object {obj.name}"
    records = json.loads((store / "models.json").read_text()) if (store / "models.json").exists() else {}
    for record in records.values():
        if record.get("serving"):
            assert (store / "objects" / record["serving"]["sha256"]).exists()
    return records


def test_sigkill_at_many_points_of_a_deployment(broker, prefix, controller, start_agent, model_dir):
    # the pre-swap latency gate off in effect: on a loaded CI box it failed an identical-architecture update (p50
    # 5.59 vs 3.80 ms, +66% in two passes) and this test is about crashes, not speed
    config = "chunk_bytes = 262144\ndownload_window = 2\nrollback_latency_pct = 10000\n"
    agent = start_agent("dev1", config=config, wait_online=controller)
    base = controller.client.upload_model(mlp(model_dir / "crash0.onnx", seed=40, pad_mb=12), "m", None)
    controller.client.deploy("m", base["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", base["sha256"], {"serving"}, timeout=60)
    registered = {base["version"]: base["sha256"]}
    killer = KillOnState(broker, prefix, "dev1")

    # kill points: the moment the agent reports each phase, then at fixed delays after the deploy
    points: list[str | float] = ["downloading", "verifying", "loading", "serving"] * 2 + [0.0, 0.05, 0.15, 0.4]
    killed_in: list[str] = []
    for i, point in enumerate(points, start=1):
        record = controller.client.upload_model(mlp(model_dir / f"crash{i}.onnx", seed=40 + i, pad_mb=12), "m", None)
        registered[record["version"]] = record["sha256"]
        if isinstance(point, str):
            killer.arm(record["sha256"], point, agent.proc.pid)
            controller.client.deploy("m", record["version"], ["dev1"])
            if killer.fired.wait(30):
                killed_in.append(point)
            agent.proc.wait(10) if killer.fired.is_set() else agent.kill()
        else:
            controller.client.deploy("m", record["version"], ["dev1"])
            time.sleep(point)
            entry = model_state(controller, "dev1", "m") or {}
            killed_in.append(f"{point}s:{entry.get('state') if entry.get('sha256') == record['sha256'] else 'pending'}")
            agent.kill()
        check_store(agent.data_dir)

        agent.start()
        # at once, from disk: a verified, registered version answers (the old one or the new one)
        meta = wait_until(lambda: agent.metadata("m"), 20, "the agent to serve from disk after SIGKILL")
        assert meta["versions"][0] in registered
        try:
            wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"}, timeout=60)
        except AssertionError as exc:  # which kill point, and what the agent said last (CI shows no more)
            tail = "\n".join(agent.logs().splitlines()[-25:])
            raise AssertionError(f"after kill point {i} ({point}): {exc}\n{tail}") from None
        records = check_store(agent.data_dir)
        assert records["m"]["serving"]["sha256"] == record["sha256"]
    killer.close()
    print(f"\nkill points tried: {len(points)}; killed in: {killed_in}")
    assert {"downloading", "verifying", "loading", "serving"} <= set(killed_in)
