"""Issue 24, the broker a new operator set up (points 10 and 15): a real Mosquitto started from what
`edge-controller broker-config` and `acl --users` write starts without a warning, binds where told, and lets devices
read the controller's presence; an agent installed by the README's `install.sh` line logs in to it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _port_open, find_mosquitto, free_port, wait_until
from hardening import PASSWORDS, Device

from protocol import ControllerPresence, Topics
from protocol.limits import MAX_MESSAGE_BYTES

TOPICS = Topics("edge")


def edge_controller(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "controller.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


class GeneratedMosquitto:
    """Mosquitto with the configuration and ACL the CLI writes, password files made with mosquitto_passwd; its
    whole log (warnings included) kept."""

    def __init__(self, tmp: Path, users: bool = True, more: dict[str, str] | None = None) -> None:
        binary, passwd = find_mosquitto(), shutil.which("mosquitto_passwd")
        if not binary or not passwd:
            pytest.skip("needs the mosquitto and mosquitto_passwd binaries (Debian package mosquitto)")
        tmp.mkdir(exist_ok=True)
        devices, controller = tmp / "passwords", tmp / "controller-passwords"
        for user, password in {**PASSWORDS, **(more or {})}.items():
            target = controller if user == "edge-controller" else devices
            target.touch()
            subprocess.run([passwd, "-b", str(target), user, password], check=True)
        acl, self.conf = tmp / "edge.acl", tmp / "mosquitto.conf"
        edge_controller("acl", "--out", str(acl), *(["--users", str(devices)] if users else []))
        self.port, self.controller_port = free_port(), free_port()
        edge_controller(
            "broker-config", "--password-file", str(devices), "--controller-password-file", str(controller),
            "--acl-file", str(acl), "--port", str(self.port), "--controller-port", str(self.controller_port),
            "--bind", "127.0.0.1", "--controller-bind", "127.0.0.1", "--out", str(self.conf),
        )  # fmt: skip
        run_as = "user root\n" if os.geteuid() == 0 else ""  # as root mosquitto drops to a user that cannot read tmp
        self.test_conf = tmp / "test.conf"
        self.test_conf.write_text(self.conf.read_text() + f"persistence false\n{run_as}")
        self.log = tmp / "mosquitto.log"
        self.proc = subprocess.Popen([binary, "-c", str(self.test_conf), "-v"], stderr=self.log.open("wb"))
        wait_until(lambda: _port_open(self.controller_port) or self.proc.poll() is not None, 10, "mosquitto")
        assert self.proc.poll() is None, self.log.read_text()
        wait_until(lambda: "running" in self.log.read_text(), 10, "mosquitto's start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def generated(tmp_path):
    mosq = GeneratedMosquitto(tmp_path)
    yield mosq
    mosq.stop()


def test_the_generated_configuration_starts_mosquitto_without_a_warning(generated):
    # running this test as root makes Mosquitto say so: the test's doing (`user root`), not the configuration's
    log = generated.log.read_text().replace("Warning: Mosquitto should not be run as root/administrator.", "")
    assert "mosquitto version" in log and "running" in log, log
    for noise in ("Warning", "Note", "deprecated", "Error"):
        assert noise not in log, log
    assert "message_size_limit" not in generated.conf.read_text()
    listening = [line for line in log.splitlines() if "listen socket" in line]
    assert listening and all("ipv4" in line for line in listening), log  # bound to 127.0.0.1 only, as told


def test_devices_read_the_controllers_presence_and_nothing_larger_than_the_protocol(generated):
    controller = Device(generated.controller_port, "edge-controller", PASSWORDS["edge-controller"])
    online = ControllerPresence(online=True).encode()
    controller.publish(TOPICS.controller_presence, online, retain=True)
    dev_a = Device(generated.port, "dev-a", PASSWORDS["dev-a"], subscribe=(TOPICS.controller_presence,))
    watcher = Device(generated.controller_port, "edge-controller", PASSWORDS["edge-controller"],
                     subscribe=(TOPICS.device("dev-a", "telemetry"),))  # fmt: skip
    try:
        wait_until(lambda: dev_a.received, 10, "the controller's presence at a device named in the ACL")
        assert dev_a.received[0][1] == online
        time.sleep(0.3)
        largest = b"x" * MAX_MESSAGE_BYTES  # the protocol's largest message passes...
        dev_a.publish(TOPICS.device("dev-a", "telemetry"), largest)
        wait_until(lambda: watcher.received, 10, "the largest message of the protocol")
        assert len(watcher.received[0][1]) == MAX_MESSAGE_BYTES
        dev_a.client.publish(TOPICS.device("dev-a", "telemetry"), b"x" * (MAX_MESSAGE_BYTES + (1 << 20)), qos=1)
        wait_until(lambda: dev_a.disconnects, 10, "the broker to drop a client sending more")  # ... more does not
        time.sleep(0.5)
        assert len(watcher.received) == 1
    finally:
        for client in (dev_a, watcher, controller):
            client.close()


def test_without_users_the_acl_says_mosquitto_will_warn(tmp_path):
    done = subprocess.run([sys.executable, "-m", "controller.cli", "acl"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "pattern read edge/v1/controller/presence" in done.stdout
    assert "--users" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


README = Path(__file__).resolve().parents[2] / "README.md"
REPO = README.parent


def readme_commands(containing: str) -> list[str]:
    """The README's shell commands (continuation lines joined, comments dropped) that contain `containing`."""
    joined = README.read_text().replace("\\\n", " ")
    commands = [line.split("   #")[0].strip() for line in joined.splitlines()]
    return [" ".join(c.split()) for c in commands if containing in c and not c.startswith("#")]


def test_the_readme_install_line_carries_credentials_an_agent_logs_in_with(tmp_path):
    """The README's `install.sh --from ... --broker` line, run as written (in a scratch root, no pip) on a bundle
    for this machine, writes a config whose user and password file an agent logs in with to the broker that
    `broker-config` and `acl --users` made (anonymous clients refused)."""
    install_lines = readme_commands("install.sh --from")
    assert len(install_lines) == 2 and all("--password-file" in c for c in install_lines), install_lines
    # the deployment's agent (not the first hour's, on its local embedded broker) logs in too
    by_hand = [c for c in readme_commands("edge-agent run") if "broker:8883" in c]
    assert by_hand and all("--broker-password-file" in c and "://cam-01@" in c for c in by_hand), by_hand

    work = tmp_path / "work"
    bundle = work / "agent-bundle"
    shutil.copytree(REPO / "systemd", bundle / "systemd")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = f"PACKAGE=edgefleet\nVERSION=0.1.0\nEXTRAS=agent\nARCH={os.uname().machine}\nPYTHON={version}\n"
    (bundle / "bundle.env").write_text(manifest)  # a bundle for this machine as `edgectl bundle` writes one, no wheels
    (bundle / "requirements.txt").write_text("edgefleet==0.1.0 --hash=sha256:" + "0" * 64 + "\n")
    sums = subprocess.run(["sha256sum", "bundle.env", "requirements.txt"], cwd=bundle, capture_output=True, text=True)
    (bundle / "SHA256SUMS").write_text(sums.stdout)
    secret = "s3cret-" + os.urandom(4).hex()
    (work / "cam-01.password").write_text(secret + "\n")
    command = install_lines[0].removeprefix("ssh cam-01 sudo ").split()
    root = tmp_path / "root"
    done = subprocess.run(["bash", *command, "--root", str(root), "--no-pip"], cwd=work, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "EDGE_PYTHON": sys.executable})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert secret not in done.stdout + done.stderr
    config = root / "etc/edge-agent/agent.toml"
    stored = root / "etc/edge-agent/broker-password"
    assert stored.read_text() == secret and oct(stored.stat().st_mode & 0o777) == "0o640"
    text = config.read_text()
    assert 'username = "cam-01"' in text and 'password_file = "/etc/edge-agent/broker-password"' in text, text
    assert secret not in text

    mosq = GeneratedMosquitto(tmp_path / "broker", more={"cam-01": secret})
    watcher = Device(mosq.controller_port, "edge-controller", PASSWORDS["edge-controller"],
                     subscribe=(TOPICS.device("cam-01", "presence"),))  # fmt: skip
    agent_log = tmp_path / "agent.log"
    run = ["run", "--config", str(config), "--broker", f"mqtt://127.0.0.1:{mosq.port}", "--broker-password-file",
           str(stored), "--data-dir", str(tmp_path / "agent"), "--api", f"127.0.0.1:{free_port()}"]  # fmt: skip
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", *run], stdout=agent_log.open("wb"),
                             stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: watcher.received, 30, "the agent's presence through the password-protected broker")
        assert b'"online":true' in watcher.received[-1][1].replace(b" ", b""), watcher.received
        assert secret not in agent_log.read_text()
    finally:
        agent.terminate()
        agent.wait(20)
        watcher.close()
        mosq.stop()
