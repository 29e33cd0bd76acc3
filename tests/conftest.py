"""Real parts for the tests: a Mosquitto broker of our own (embedded amqtt where no mosquitto is installed),
a controller on a thread, agents as real processes, ONNX models built on the spot, and systemd's notify socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from edgectl import sample_models
from edgectl.client import ControllerClient

if TYPE_CHECKING:  # imported when used: the agent-only jobs (.ci/pyjobs.sh) run without the controller
    from controller.service import BackgroundController

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 20.0, message: str = "condition", poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def find_mosquitto() -> str | None:
    if os.environ.get("EDGE_TEST_BROKER") == "embedded":
        return None
    for candidate in MOSQUITTO_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@dataclass
class Broker:
    url: str
    port: int
    kind: str
    stop: Callable[[], None]


def start_mosquitto(binary: str, directory: Path, extra_conf: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 10000\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n{extra_conf}"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=(directory / "mosquitto.log").open("wb"))
    wait_until(lambda: _port_open(port) or proc.poll() is not None, 10, "mosquitto to listen")
    if proc.poll() is not None:
        raise RuntimeError((directory / "mosquitto.log").read_text())
    return proc, port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[Broker]:
    """Mosquitto where installed (our own instance on a free port), the embedded broker otherwise."""
    binary = find_mosquitto()
    if binary:
        proc, port = start_mosquitto(binary, tmp_path_factory.mktemp("mosquitto"))
        yield Broker(f"mqtt://127.0.0.1:{port}", port, "mosquitto", proc.terminate)
        proc.terminate()
        proc.wait(5)
    else:
        from controller.broker.embedded import EmbeddedBroker

        embedded = EmbeddedBroker("127.0.0.1", free_port())
        embedded.start()
        yield Broker(embedded.url, embedded.port, "embedded", embedded.stop)
        embedded.stop()


@pytest.fixture
def prefix(request) -> str:
    """A topic prefix per test, so retained messages of one test never reach another on the shared broker."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}"


class ControllerHandle:
    def __init__(self, broker: Broker, data_dir: Path, prefix: str, db: str | None = None) -> None:
        from controller.service import ControllerSettings

        self.settings = ControllerSettings(
            data_dir=data_dir, broker=broker.url, http=f"127.0.0.1:{free_port()}", topic_prefix=prefix, db=db
        )
        self.bg: BackgroundController | None = None
        self.start()

    def start(self) -> None:
        from controller.service import BackgroundController

        self.bg = BackgroundController(self.settings)
        self.url = self.bg.url
        self.client = ControllerClient(self.url)
        wait_until(lambda: self.bg.controller.fleet.connected, 10, "controller to connect to the broker")

    def stop(self) -> None:
        if self.bg:
            self.bg.stop()
            self.bg = None

    def device(self, device_id: str) -> dict:
        return self.client.device(device_id)


class SettingsController(ControllerHandle):
    """The conftest controller, with settings of its own (public URL, artifact base URL, fetch rate, token)."""

    def __init__(self, broker, data_dir: Path, prefix: str, **settings) -> None:
        from controller.service import ControllerSettings

        settings.setdefault("http", f"127.0.0.1:{free_port()}")
        self.settings = ControllerSettings(data_dir=data_dir, broker=broker.url, topic_prefix=prefix, **settings)
        self.bg = None
        self.start()
        if self.settings.token:
            self.client = ControllerClient(self.url, token=self.settings.token)


@pytest.fixture
def make_controller(broker, tmp_path, prefix):
    made: list[SettingsController] = []

    def make(**settings) -> SettingsController:
        made.append(SettingsController(broker, tmp_path / "controller", prefix, **settings))
        return made[-1]

    yield make
    for handle in made:
        handle.stop()


@pytest.fixture
def controller(broker, tmp_path, prefix) -> Iterator[ControllerHandle]:
    handle = ControllerHandle(broker, tmp_path / "controller", prefix)
    yield handle
    handle.stop()


@dataclass
class AgentProcess:
    device_id: str
    data_dir: Path
    api_port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metadata(self, model: str) -> dict | None:
        try:
            r = httpx.get(f"{self.api}/v2/models/{model}", timeout=2)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None


@pytest.fixture
def start_agent(broker, tmp_path, prefix) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(device_id: str = "dev1", *, config: str = "", extra: list[str] | None = None, wait_online=None):
        data_dir = tmp_path / f"agent-{device_id}"
        data_dir.mkdir(exist_ok=True)
        config_file = data_dir / "agent.toml"
        config_file.write_text(f'topic_prefix = "{prefix}"\n{config}')
        port = free_port()
        args = [
            "--config", str(config_file), "--broker", broker.url, "--device-id", device_id,
            "--data-dir", str(data_dir), "--api", f"127.0.0.1:{port}", *(extra or []),
        ]  # fmt: skip
        agent = AgentProcess(device_id, data_dir, port, args, tmp_path / f"agent-{device_id}.log").start()
        agents.append(agent)
        if wait_online is not None:
            wait_until(lambda: _online(wait_online, device_id), 20, f"{device_id} to come online")
        return agent

    yield start
    for agent in agents:
        agent.kill()


def _online(controller: ControllerHandle, device_id: str) -> bool:
    try:
        return controller.device(device_id)["online"]
    except Exception:
        return False


def model_state(controller: ControllerHandle, device_id: str, name: str) -> dict | None:
    for entry in controller.device(device_id)["models"]:
        if entry["name"] == name:
            return entry
    return None


def wait_model_state(controller, device_id: str, name: str, sha256: str, states: set[str], timeout: float = 30):
    """The model's entry once it names `sha256` in one of `states`; a timeout says what the device reported last."""
    last: list[dict | None] = [None]

    def check():
        entry = last[0] = model_state(controller, device_id, name)
        return entry if entry and entry["sha256"] == sha256 and entry["state"] in states else None

    try:
        return wait_until(check, timeout, f"{name} {sha256[:8]} to reach {states} on {device_id}")
    except AssertionError as exc:
        entry = last[0] or {}
        seen = {k: entry.get(k) for k in ("sha256", "version", "state", "error", "detail") if entry.get(k)}
        raise AssertionError(f"{exc}; last reported: {seen or 'nothing'}") from None


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_model(model_dir) -> Path:
    return sample_models.mlp(model_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def mlp_model_v2(model_dir) -> Path:
    return sample_models.mlp(model_dir / "mlp-v2.onnx", seed=1)


class NotifySocket:
    """What systemd does: an AF_UNIX datagram socket whose messages we collect."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.split("\n")]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines() if line.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sockets: list[NotifySocket] = []

    def make(abstract: bool = False) -> NotifySocket:
        if abstract:
            address = f"@edge-agent-test-{uuid.uuid4().hex}"
        else:
            address = str(Path(f"/tmp/edge-notify-{uuid.uuid4().hex[:12]}.sock"))  # sun_path is short: not tmp_path
        sockets.append(NotifySocket(address))
        return sockets[-1]

    yield make
    for s in sockets:
        s.close()
        if not s.env_value.startswith("@"):
            Path(s.env_value).unlink(missing_ok=True)
