"""Relative paths in the daemons' options are resolved once, at start, against the directory they were started in:
an agent started with `--data-dir data` serves what it is sent (its backend trial runs in a worker process with
another working directory), and the controller's settings hold absolute paths only (the agent's configuration in
process: tests/unit/agent/test_config.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import AgentProcess, free_port, wait_model_state, wait_until
from test_e2e import v2_infer

from edgectl import sample_models


def test_an_agent_started_with_a_relative_data_dir_serves_what_it_is_sent(controller, broker, prefix, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "agent.toml").write_text(f'topic_prefix = "{prefix}"\n')
    port = free_port()
    args = ["--config", "agent.toml", "--broker", broker.url, "--device-id", "rel1", "--data-dir", "data",
            "--api", f"127.0.0.1:{port}"]  # fmt: skip
    agent = AgentProcess("rel1", cwd / "data", port, args, tmp_path / "agent.log")
    with agent.log.open("ab") as out:
        agent.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: controller.client.devices() and controller.device("rel1")["online"], 30, "rel1 online")
        record = controller.client.upload_model(sample_models.mlp(tmp_path / "mlp.onnx", seed=81), "mlp", None)
        controller.client.deploy("mlp", record["version"], ["rel1"])
        entry = wait_model_state(controller, "rel1", "mlp", record["sha256"], {"serving", "failed"}, timeout=60)
        assert entry["state"] == "serving", entry.get("reason")
        assert v2_infer(agent, "mlp", np.zeros((1, 16), dtype=np.float32))["outputs"]
        assert (cwd / "data" / "store").is_dir()  # the directory it was started in, nowhere else
    finally:
        if agent.proc.poll() is None:
            os.killpg(agent.proc.pid, signal.SIGKILL)
            agent.proc.wait(10)


def test_controller_settings_hold_absolute_paths(tmp_path, monkeypatch):
    from controller.service import ControllerSettings

    monkeypatch.chdir(tmp_path)
    settings = ControllerSettings(
        data_dir=Path("ctl"), db="sqlite:///ctl/controller.db?timeout=5", signing_key=Path("keys/sign.pem"),
        broker_password_file=Path("pw"), broker_users_file=Path("users"),
    )  # fmt: skip
    assert settings.data_dir == tmp_path / "ctl" and settings.signing_key == tmp_path / "keys" / "sign.pem"
    assert settings.broker_password_file == tmp_path / "pw" and settings.broker_users_file == tmp_path / "users"
    assert settings.db == f"sqlite:///{tmp_path}/ctl/controller.db?timeout=5"
    for kept in ("sqlite:////srv/edge/c.db", "sqlite://", "sqlite:///:memory:", "postgresql://edge@db/edge", None):
        assert ControllerSettings(data_dir=tmp_path, db=kept).db == kept
