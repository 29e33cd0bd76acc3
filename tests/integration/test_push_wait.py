"""`edgectl push --wait` as an operator runs it (a real controller, a real agent, the CLI as a process): a version the
device serves already returns at once saying so, and output to a pipe shows each change of a device's state (e.g.
offline) while it waits instead of staying silent until the timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from conftest import wait_until

from edgectl import sample_models


def edgectl(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgectl.cli", *args]


def env_for(controller_url: str) -> dict[str, str]:
    return {**os.environ, "EDGECTL_CONTROLLER": controller_url, "COLUMNS": "100"}


def test_push_wait_of_the_version_a_device_serves_returns_at_once(controller, start_agent, tmp_path):
    start_agent("dev1", wait_online=controller)
    model = sample_models.mlp(tmp_path / "mlp.onnx", seed=71)
    push = ["push", str(model), "-n", "mlp", "--to", "dev1", "--wait", "--timeout", "60"]
    first = subprocess.run(edgectl(*push), capture_output=True, text=True, env=env_for(controller.url))
    assert first.returncode == 0, first.stderr
    assert "already serving" not in first.stdout

    started = time.monotonic()
    again = subprocess.run(edgectl(*push[:-1], "30"), capture_output=True, text=True, env=env_for(controller.url))
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert "already registered mlp version 1" in again.stdout
    (line,) = [out for out in again.stdout.splitlines() if out.strip().startswith("dev1:")]
    assert "serving" in line and "already serving this version" in line, again.stdout
    assert took < 15, took  # at once, not at the 30 s timeout


def test_push_wait_to_a_pipe_says_when_a_device_is_offline(controller, start_agent, tmp_path):
    agent = start_agent("dev1", wait_online=controller)
    agent.stop()
    wait_until(lambda: not controller.device("dev1")["online"], 30, "dev1 offline")
    model = sample_models.mlp(tmp_path / "mlp.onnx", seed=72)
    push = subprocess.Popen(
        edgectl("push", str(model), "-n", "mlp", "--to", "dev1", "--wait", "--timeout", "20"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(controller.url),
    )  # fmt: skip
    started = time.monotonic()
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert push.stderr is not None
        for line in push.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        push.wait(60)
    finally:
        if push.poll() is None:
            push.kill()
    reader.join(5)
    assert push.returncode == 1
    offline = [(at, line) for at, line in lines if line == "dev1: pending (device is offline)"]
    assert len(offline) == 1, lines  # said once, when it became news
    assert offline[0][0] < 10, lines  # while waiting, not at the 20 s timeout
    assert lines[-1][1].startswith("error: mlp is pending on 1 of 1 device(s)"), lines
    assert "timed out after 20s" in lines[-1][1] and "device is offline" in lines[-1][1]
