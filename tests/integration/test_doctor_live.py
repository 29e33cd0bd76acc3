"""`edge-agent doctor` on a device as deployed: Mosquitto from `edge-controller broker-config` (password file, client
id = user name), the device's password in `password_file`. The doctor reads the config as `run` does (the password
file, the same flags) and, on a live device, asks the running agent instead of connecting as the device beside it
(which would take its session: the broker publishes the device's "offline" will and the agent reconnects)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
from conftest import free_port, wait_until
from hardening import PASSWORDS, FleetMosquitto
from paho.mqtt.enums import CallbackAPIVersion

from protocol import Presence, Topics, decode


def doctor(cwd, *args: str) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--json", *args],
        capture_output=True, text=True, env=env, timeout=120, cwd=cwd,
    )  # fmt: skip
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == (1 if any(c["outcome"] == "fail" for c in checks.values()) else 0), result.stderr
    return checks


class PresenceWatch:
    """The device's presence messages as the controller's user receives them."""

    def __init__(self, fleet: FleetMosquitto, topic: str) -> None:
        self.seen: list[bool] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.username_pw_set("edge-controller", PASSWORDS["edge-controller"])
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.on_message = lambda c, u, msg: self.seen.append(decode(Presence, msg.payload).online)
        self.client.connect("127.0.0.1", fleet.controller_port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_doctor_uses_the_password_file_and_leaves_a_running_agent_connected(tmp_path, prefix):
    fleet = FleetMosquitto(tmp_path, prefix)
    api = f"127.0.0.1:{free_port()}"
    (tmp_path / "pw").write_text(PASSWORDS["dev-a"] + "\n")
    (tmp_path / "agent.toml").write_text(
        f'device_id = "dev-a"\nbroker = "mqtt://127.0.0.1:{fleet.port}"\nusername = "dev-a"\n'
        f'topic_prefix = "{prefix}"\ndata_dir = "data"\napi = "{api}"\n'
    )
    watch = PresenceWatch(fleet, Topics(prefix).device("dev-a", "presence"))
    agent = None
    try:
        # no agent running: the doctor connects itself, with the password `run` reads from the file (or the flag)
        (tmp_path / "agent.toml").write_text((tmp_path / "agent.toml").read_text() + 'password_file = "pw"\n')
        checks = doctor(tmp_path, "--config", "agent.toml")
        assert checks["broker mqtt"]["outcome"] == "ok", checks["broker mqtt"]
        assert "as dev-a" in checks["broker mqtt"]["detail"]
        config = (tmp_path / "agent.toml").read_text()
        (tmp_path / "agent.toml").write_text(config.replace('password_file = "pw"\n', ""))
        checks = doctor(tmp_path, "--config", "agent.toml", "--broker-password-file", "pw")
        assert checks["broker mqtt"]["outcome"] == "ok", checks["broker mqtt"]

        # the agent runs: the doctor asks it, and the agent stays connected (no "offline" will, no reconnect)
        log = (tmp_path / "agent.log").open("ab")
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", "agent.toml", "--broker-password-file", "pw"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(lambda: watch.seen and watch.seen[-1], 30, "dev-a online")
        checks = doctor(tmp_path, "--config", "agent.toml", "--broker-password-file", "pw")
        detail = checks["broker mqtt"]["detail"]
        assert checks["broker mqtt"]["outcome"] == "ok" and "running agent" in detail and "connected" in detail, detail
        spare = checks["trial spare"]  # the running agent's own choice of a spare trial worker, and why
        assert spare["outcome"] == "ok" and "spare trial worker" in spare["detail"], spare
        time.sleep(2)  # a takeover's will and the agent's reconnect would be here by now
        assert watch.seen == [True], watch.seen
        assert "lost connection" not in (tmp_path / "agent.log").read_text()
    finally:
        if agent is not None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        watch.close()
        fleet.stop()


def refused(check: dict) -> dict | None:
    return check if "refused the connection" in check["detail"] else None


def test_doctor_reports_a_running_agent_the_broker_refuses(tmp_path, prefix):
    fleet = FleetMosquitto(tmp_path, prefix)
    (tmp_path / "pw").write_text("wrong\n")
    (tmp_path / "agent.toml").write_text(
        f'device_id = "dev-a"\nbroker = "mqtt://dev-a@127.0.0.1:{fleet.port}"\npassword_file = "pw"\n'
        f'topic_prefix = "{prefix}"\ndata_dir = "data"\napi = "127.0.0.1:{free_port()}"\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", "agent.toml"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        check = wait_until(lambda: refused(doctor(tmp_path, "--config", "agent.toml")["broker mqtt"]), 60, "refusal")
        assert check["outcome"] == "fail" and "running agent" in check["detail"], check
        assert "password_file" in check["fix"], check
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
        fleet.stop()
