"""systemd integration: sd_notify from a real agent process (READY, STATUS, WATCHDOG, STOPPING), shutdown on SIGTERM
(in-flight inferences finish, offline presence is retained), and `systemd-analyze verify` on the units (the notifier
on its own: tests/unit/daemon)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import AgentProcess, free_port, wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
UNITS = ("edge-agent.service", "edge-controller.service")


def launch(tmp_path: Path, prefix: str, broker_url: str, env: dict[str, str], device_id: str = "dev1") -> AgentProcess:
    data_dir = tmp_path / f"agent-{device_id}"
    data_dir.mkdir(exist_ok=True)
    config_file = data_dir / "agent.toml"
    config_file.write_text(f'topic_prefix = "{prefix}"\n')
    port = free_port()
    args = [
        "--config", str(config_file), "--broker", broker_url, "--device-id", device_id,
        "--data-dir", str(data_dir), "--api", f"127.0.0.1:{port}",
    ]  # fmt: skip
    agent = AgentProcess(device_id, data_dir, port, args, tmp_path / f"agent-{device_id}.log")
    agent.env = env
    return agent.start()


@pytest.fixture
def agents():
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def retained(broker_port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    """The retained message on `topic`, read with a fresh subscriber."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_message = lambda c, u, m: (got.append(m.payload), done.set())
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    return got[0] if got else None


# -- a real agent process -------------------------------------------------------------------------------------------


def test_agent_notifies_ready_status_watchdog_and_stops_cleanly_on_sigterm(
    broker, prefix, tmp_path, notify_socket, agents
):
    sink = notify_socket(abstract=True)
    env = {"NOTIFY_SOCKET": sink.env_value, "WATCHDOG_USEC": "1000000"}
    agent = launch(tmp_path, prefix, broker.url, env)
    agents.append(agent)

    wait_until(lambda: sink.count("READY=1"), 20, "READY=1")
    wait_until(lambda: sink.count("WATCHDOG=1") >= 3, 10, "three WATCHDOG=1 pings (every 0.5 s)")
    assert sink.count("READY=1") == 1
    assert any(re.fullmatch(r"serving 0 models; connected to mqtt://127\.0\.0\.1:\d+", s) for s in sink.statuses())
    presence = json.loads(retained(broker.port, f"{prefix}/v1/devices/dev1/presence"))
    assert presence["online"] is True

    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0, agent.logs()
    assert sink.count("STOPPING=1") == 1
    presence = json.loads(retained(broker.port, f"{prefix}/v1/devices/dev1/presence"))
    assert presence["online"] is False


def test_agent_is_ready_from_disk_without_a_broker(controller, broker, prefix, tmp_path, notify_socket, agents):
    """READY=1 comes once the models on disk serve, before any broker answers."""
    from edgectl import sample_models

    model = sample_models.mlp(tmp_path / "m.onnx")
    first = launch(tmp_path, prefix, broker.url, {})
    agents.append(first)
    wait_until(lambda: controller.device("dev1")["online"] if _known(controller) else False, 20, "dev1 online")
    uploaded = controller.client.upload_model(model, "mlp", None)
    controller.client.deploy("mlp", uploaded["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", uploaded["sha256"], {"serving"})
    assert first.stop() == 0

    sink = notify_socket(abstract=False)
    dead = f"mqtt://127.0.0.1:{free_port()}"
    again = launch(tmp_path, prefix, dead, {"NOTIFY_SOCKET": sink.env_value})
    agents.append(again)
    wait_until(lambda: sink.count("READY=1"), 20, "READY=1 with the broker down")
    ready_status = sink.lines()[sink.lines().index("READY=1") + 1]
    assert ready_status.startswith("STATUS=serving 1 model; broker mqtt://127.0.0.1:"), ready_status
    assert again.metadata("mlp") is not None
    assert again.stop() == 0


def _known(controller) -> bool:
    try:
        controller.device("dev1")
        return True
    except Exception:
        return False


# -- shutdown with a request in flight (in process, with a deliberately slow model) -------------------------------


def test_sigterm_path_finishes_in_flight_inference_then_goes_offline(broker, prefix, tmp_path, mlp_model):
    from agent.config import load_config
    from agent.service import Agent
    from agent.serving.table import LoadedModel
    from targets import registry

    cfg = load_config(
        None,
        {
            "broker": broker.url,
            "device_id": "slow1",
            "data_dir": tmp_path / "agent",
            "api": f"127.0.0.1:{free_port()}",
            "topic_prefix": prefix,
        },
        environ={},
    )
    agent = Agent(cfg)
    agent.start()
    assert agent.link.wait_connected(10)
    backend = registry.create("onnxruntime", None)
    backend.load(mlp_model, "onnx")
    entered = threading.Event()
    fast_infer = backend.infer

    def slow_infer(arrays):
        entered.set()
        time.sleep(1.5)
        return fast_infer(arrays)

    backend.infer = slow_infer
    agent.table.swap(LoadedModel("mlp", "1", "0" * 64, backend))

    x = np.zeros((1, 16), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    result: dict = {}

    def request():
        r = httpx.post(f"http://127.0.0.1:{cfg.api_port}/v2/models/mlp/infer", json=body, timeout=10)
        result["status"], result["body"] = r.status_code, r.json()

    client = threading.Thread(target=request)
    client.start()
    assert entered.wait(5)
    started = time.monotonic()
    agent.stop()
    client.join(5)
    assert result.get("status") == 200, result
    assert result["body"]["outputs"][0]["shape"] == [1, 4]
    assert time.monotonic() - started < 10
    presence = json.loads(retained(broker.port, f"{prefix}/v1/devices/slow1/presence"))
    assert presence["online"] is False
    with pytest.raises(httpx.HTTPError):  # no longer accepting
        httpx.post(f"http://127.0.0.1:{cfg.api_port}/v2/models/mlp/infer", json=body, timeout=2)


# -- units --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt: systemd)")
@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    """verify checks that ExecStart exists, so the unit is checked with its binary path rewritten to one that does."""
    text = (REPO / "systemd" / unit).read_text()
    fake = tmp_path / "bin" / unit.split(".")[0]
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    rewritten = re.sub(r"^ExecStart=\S+", f"ExecStart={fake}", text, flags=re.M)
    assert rewritten != text
    (tmp_path / unit).write_text(rewritten)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit in line or "Unknown" in line or "ignoring" in line.lower()
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_agent_unit_settings():
    text = (REPO / "systemd" / "edge-agent.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#")
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] == "30" and settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"] == "78" and settings["TimeoutStopSec"] == "20"
    assert settings["CapabilityBoundingSet"] == "" and settings["NoNewPrivileges"] == "yes"
    assert "PrivateDevices" not in settings
    assert "DeviceAllow=char-drm rw" in text and "DeviceAllow=char-nvidia* rw" in text


# -- install.sh in a scratch root ---------------------------------------------------------------------------------


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--no-pip", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 or not check, result.stdout + result.stderr
    return result


@pytest.mark.parametrize(
    ("setup", "extras"),
    [
        ({"etc/nv_tegra_release": "# R36 (release)"}, "gpu"),
        ({"proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\0"}, "agent,tflite"),
        ({"dev/dri/renderD128": ""}, "agent,openvino"),
        ({}, "agent"),
    ],
)
def test_install_picks_extras_by_hardware(tmp_path, setup, extras):
    for relative, content in setup.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    out = install(tmp_path).stdout
    assert f"extras for this hardware: {extras}\n" in out
    assert f"pip install 'edgefleet[{extras}]'" in out


def test_install_writes_config_and_unit_is_idempotent_and_uninstalls(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text('p"w\n')
    first = install(tmp_path, "--broker", "mqtts://broker.example:8883", "--device-id", "cam-01", "--username", "cam",
                    "--password-file", str(secret))  # fmt: skip
    config = tmp_path / "etc/edge-agent/agent.toml"
    unit = tmp_path / "etc/systemd/system/edge-agent.service"
    assert f"wrote {config}" in first.stdout and f"wrote {unit}" in first.stdout
    assert "would run: systemctl enable --now edge-agent.service" in first.stdout
    assert "would run: useradd --system" in first.stdout
    assert unit.read_text() == (REPO / "systemd" / "edge-agent.service").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"

    from agent.config import load_config

    cfg = load_config(config, {}, environ={})
    assert (cfg.broker, cfg.device_id, cfg.username, str(cfg.password_file)) == (
        "mqtts://broker.example:8883",
        "cam-01",
        "cam",
        "/etc/edge-agent/broker-password",
    )
    stored = tmp_path / "etc/edge-agent/broker-password"
    assert stored.read_text() == 'p"w' and oct(stored.stat().st_mode & 0o777) == "0o640"
    assert 'p"w' not in config.read_text()

    before = {p: p.stat().st_mtime_ns for p in (config, unit)}
    second = install(tmp_path)  # no flags: keeps what the config says
    assert "wrote" not in second.stdout and f"unchanged {config}" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in (config, unit)} == before

    removed = install(tmp_path, "--uninstall")
    assert "would run: systemctl disable --now edge-agent.service" in removed.stdout
    assert not unit.exists() and config.exists()


def test_install_refuses_a_password_on_the_command_line(tmp_path):
    """A password in argv is readable by every user through ps and stays in the shell history (issue 26.12)."""
    result = install(tmp_path, "--device-id", "cam-01", "--password", "secret", check=False)
    assert result.returncode == 1 and "secret" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("install.sh: --password would show the password") and "--password-file FILE" in line
