"""Every error of the newcomer list, reproduced with the real daemons and CLI: each is one line that names its cause
(the setting, the device, the controller), never a traceback; and the facts a newcomer saw stale or odd are right."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import free_port, wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edgectl import sample_models
from edgectl.progress import bar_fraction
from edgectl.watch import DeviceOutcome
from protocol import Presence, Topics

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout, env=full_env)


PROGRESS = re.compile(r"^\S+: (pending|downloading|verifying|loading|checking)( \(.*\))?$")


def one_line(result: subprocess.CompletedProcess, *causes: str) -> str:
    """The single stderr line of a failed command (besides `--wait`'s progress lines, printed there when stderr is
    not a terminal), checked to name every cause given."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert result.returncode != 0, result
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for cause in causes:
        assert cause in lines[0], lines[0]
    return lines[0]


def test_readme_installs_from_the_checkout_not_from_an_unpublished_package():
    text = README.read_text()
    assert not re.search(r"pip install '?edgefleet\[", text)  # `No matching distribution found`: not published
    assert "pip install '.[controller]'" in text and "pip wheel" in text
    assert "edgectl bundle --platform linux-aarch64" in text and "install.sh --from" in text


@pytest.mark.parametrize(
    ("args", "causes"),
    [
        (["--data-dir", "{file}/sub"], ["--data-dir", "cannot create it (Not a directory)"]),
        (["--db", "foo://bar"], ["--db foo://bar", "unsupported database 'foo'", "sqlite:///PATH"]),
        (["--db", "postgresql://nobody:pw@127.0.0.1:{closed}/x"], ["--db postgresql://nobody:***@", "cannot use"]),
        (["--broker", "foo://x"], ["--broker 'foo://x'", "mqtt://"]),
    ],
)
def test_controller_configuration_errors_name_the_setting(tmp_path, args, causes):
    (tmp_path / "file").write_text("not a directory")
    args = [a.format(file=tmp_path / "file", closed=free_port()) for a in args]
    data = [] if "--data-dir" in args else ["--data-dir", str(tmp_path / "data")]
    result = run("controller.cli", "serve", *data, *args, "--http", f"127.0.0.1:{free_port()}")
    line = one_line(result, *causes)
    assert line.startswith("edge-controller: ") and "Can't load plugin" not in line and "pw" not in line


def test_agent_bad_data_dir_is_one_line_naming_data_dir(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run("agent.cli", "run", "--data-dir", str(tmp_path / "file" / "sub"), "--api", f"127.0.0.1:{free_port()}")
    assert result.returncode == 78  # EX_CONFIG: systemd does not restart it
    one_line(result, "data_dir", "Not a directory", "--data-dir")


def test_agent_bad_broker_url_names_the_setting(tmp_path):
    result = run("agent.cli", "run", "--data-dir", str(tmp_path), "--broker", "foo://x")
    one_line(result, "broker", "foo://x", "mqtt://HOST")


def test_agent_logs_each_failed_broker_attempt_with_reason_and_backoff(start_agent, tmp_path):
    closed = free_port()
    agent = start_agent("lonely", extra=["--broker", f"mqtt://127.0.0.1:{closed}"])
    pattern = re.compile(
        r"cannot connect to broker .*:\d+: connection refused .*attempt (\d+) failed, next in ([\d.]+)s"
    )
    found = wait_until(lambda: len(pattern.findall(agent.logs())) >= 2, 30, "two logged connection attempts")
    assert found
    attempts = pattern.findall(agent.logs())
    assert [int(a) for a, _ in attempts[:2]] == [1, 2]
    assert float(attempts[1][1]) > float(attempts[0][1]) / 2  # the backoff grows, it is not reset on each failure


def test_failed_model_reason_is_printed_once_per_device_and_the_error_is_one_line(controller, start_agent, tmp_path):
    from zoo.sklearn_models import custom_op_model

    start_agent("dev1", wait_online=controller)
    custom_op_model(tmp_path / "custom.onnx")
    env = {"EDGECTL_CONTROLLER": controller.url}
    result = run("edgectl.cli", "push", str(tmp_path / "custom.onnx"), "-n", "custom", "--to", "dev1", "--wait",
                 env=env)  # fmt: skip
    line = one_line(result, "custom is failed on 1 of 1 device(s) (dev1)", "edgectl status dev1 --model custom")
    assert len(line) < 300
    assert all(len(out) <= 80 for out in result.stdout.splitlines()), result.stdout
    assert (result.stdout + result.stderr).count("could not load") == 2  # the device's line, the error: not three

    shown = run("edgectl.cli", "status", "dev1", env=env).stdout
    row = [out for out in shown.splitlines() if out.startswith("custom ")]
    assert len(row) == 1 and "could not load" in row[0]  # the reason's cause on one line of the table
    assert not re.search(r"\bNone\b|\bTrue\b|\bFalse\b", shown), shown
    verbose = " ".join(run("edgectl.cli", "--verbose", "status", "dev1", env=env).stdout.split())
    assert "operator FancyNorm of domain com.example.custom" in verbose


def test_rollback_says_the_version_the_device_serves(controller, start_agent, tmp_path):
    from zoo.sklearn_models import custom_op_model

    start_agent("dev1", wait_online=controller)
    good = controller.client.upload_model(sample_models.mlp(tmp_path / "mlp.onnx"), "m", None)
    controller.client.deploy("m", good["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", good["sha256"], {"serving"})
    custom_op_model(tmp_path / "custom.onnx")
    bad = controller.client.upload_model(tmp_path / "custom.onnx", "m", None)
    controller.client.deploy("m", bad["version"], ["dev1"])
    wait_model_state(controller, "dev1", "m", bad["sha256"], {"failed"})  # the device still serves version 1

    result = run("edgectl.cli", "rollback", "dev1", "--to", "1", env={"EDGECTL_CONTROLLER": controller.url})
    assert result.returncode == 0, result.stderr
    assert "from version 2" not in result.stdout and "serves version 1" in result.stdout, result.stdout


def test_push_wait_notices_a_dead_controller_within_seconds(broker, start_agent, tmp_path, prefix):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ctl = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "serve", "--broker", broker.url, "--http", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "ctl"), "--topic-prefix", prefix],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        from edgectl.client import ApiError, ControllerClient

        client = ControllerClient(url)

        def online() -> bool:
            try:
                return bool(client.device("dev1")["online"])
            except ApiError:
                return False

        agent = start_agent("dev1")
        wait_until(online, 30, "dev1 online")
        agent.stop()  # a device that never gets the model: the wait can only end by the controller's death
        wait_until(lambda: not online(), 30, "dev1 offline")
        push = subprocess.Popen(
            [sys.executable, "-m", "edgectl.cli", "push", str(sample_models.mlp(tmp_path / "mlp.onnx")), "-n", "m",
             "--to", "dev1", "--wait", "--timeout", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "EDGECTL_CONTROLLER": url},
        )  # fmt: skip
        assert "-> deploying to dev1" in push.stdout.readline()  # printed once the deployment is recorded
        os.killpg(ctl.pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = push.communicate(timeout=120)
        noticed = time.monotonic() - killed
    finally:
        if ctl.poll() is None:
            os.killpg(ctl.pid, signal.SIGKILL)
        ctl.wait(10)
    assert push.returncode == 1
    *progress, last = err.strip().splitlines()
    assert last.startswith(f"error: lost the controller at {url}"), err
    assert set(progress) <= {"dev1: pending (device is offline)"}, err  # progress while it waited (a pipe)
    assert noticed < 60, noticed  # seconds, not the 300 s timeout


def publish(broker, topic: str, payload: bytes) -> None:
    host, port = broker.url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"op-test-{time.monotonic_ns()}")
    client.connect(host, int(port))
    client.loop_start()
    client.publish(topic, payload, 1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_last_seen_is_refreshed_by_any_message_from_the_device(controller, broker, prefix):
    topics = Topics(prefix)
    publish(broker, topics.device("box1", "presence"), Presence(device_id="box1", online=True).encode())
    first = wait_until(lambda: controller.client.devices() and controller.device("box1")["last_seen"], 10, "box1")
    time.sleep(1.1)
    publish(broker, topics.device("box1", "telemetry"), b"{}")  # telemetry only: no presence, no state
    wait_until(lambda: controller.device("box1")["last_seen"] > first + 1.0, 10, "telemetry to refresh last seen")


def test_a_failed_model_bar_never_shows_100_percent():
    assert bar_fraction(DeviceOutcome("d", state="failed", progress=1.0), before=1.0) < 1.0
    assert bar_fraction(DeviceOutcome("d", state="failed", progress=1.0), before=0.8) == 0.8
    assert bar_fraction(DeviceOutcome("d", state="downloading", progress=1.0)) < 1.0
    assert bar_fraction(DeviceOutcome("d", state="serving")) == 1.0


def test_help_labels_say_what_to_give_not_python_types():
    text = run("edgectl.cli", "push", "--help", env={"COLUMNS": "120"}).stdout
    for label in ("<bool>", "<str>", "<list", "<float>", "<path>"):
        assert label not in text, text
    assert "DEVICE" in text and "SECONDS" in text and "URL" in text
    for command in ("rollback", "status", "label", "capture", "convert", "drift"):  # arguments: `DEVICE`, not `<str>`
        text = run("edgectl.cli", command, "--help", env={"COLUMNS": "120"}).stdout
        assert not re.search(r"<(str|path|int|float|list)", text), text
    assert "<show|baseline|fleet>" in text  # listed choices say what to give
