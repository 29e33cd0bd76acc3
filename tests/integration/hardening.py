"""Shared parts of the hardening tests (tests/integration/test_hardening_*.py): a controller as a real process whose
memory peak can be read, paho clients with a device's credentials, a Mosquitto started from the configuration the
controller generates, and raw HTTP over a socket."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import _port_open, find_mosquitto, free_port, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from controller.broker.acl import mosquitto_acl
from controller.broker.mosquitto import BrokerFiles, mosquitto_config


class ControllerProcess:
    """`edge-controller serve` as a child process (its own memory, its own log)."""

    def __init__(self, tmp: Path, *args: str, broker: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tmp / "controller-data"
        self.log = tmp / f"controller-{self.port}.log"
        self.args = ["--data-dir", str(self.data), "--http", f"127.0.0.1:{self.port}", *args]
        if broker is not None:
            self.args += ["--broker", broker]
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> ControllerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_CONTROLLER_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "serve", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            wait_until(self.healthy, 30, f"the controller on {self.url} ({self.logs()[-500:]})")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.logs()[-2000:]
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process has held."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Device:
    """A paho client logged in with real credentials; records what it receives and whether it was disconnected."""

    def __init__(
        self,
        port: int,
        user: str | None,
        password: str | None,
        client_id: str | None = None,
        subscribe: tuple[str, ...] = (),
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack = threading.Event()
        self.refused: str | None = None
        self.disconnects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{user}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv311,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))

        def on_connect(client, userdata, flags, reason_code, properties):
            if reason_code.is_failure:
                self.refused = str(reason_code)
            else:
                for topic in subscribe:
                    client.subscribe(topic, 1)
            self.connack.set()

        def on_disconnect(client, userdata, flags, reason_code, properties):
            self.disconnects += 1
            self.connack.set()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connack.wait(10), "no CONNACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


PASSWORDS = {"edge-controller": "ctl-secret", "dev-a": "a-secret", "dev-b": "b-secret", "evil": "evil-secret"}


class FleetMosquitto:
    """A Mosquitto started from `edge-controller broker-config`'s output: password files made with mosquitto_passwd,
    the generated ACL, the devices' and the controller's listeners."""

    def __init__(self, tmp: Path, prefix: str = "edge") -> None:
        binary, passwd = find_mosquitto(), shutil.which("mosquitto_passwd")
        if not binary or not passwd:
            pytest.skip("needs the mosquitto and mosquitto_passwd binaries (Debian package mosquitto)")
        devices, controller = tmp / "passwords", tmp / "controller-passwords"
        devices.touch()
        controller.touch()
        for user, password in PASSWORDS.items():
            target = controller if user == "edge-controller" else devices
            subprocess.run([passwd, "-b", str(target), user, password], check=True)
        acl = tmp / "acl"
        acl.write_text(mosquitto_acl(prefix))
        self.port, self.controller_port = free_port(), free_port()
        root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user that cannot read
        text = mosquitto_config(
            BrokerFiles(devices, acl, controller),
            port=self.port,
            controller_port=self.controller_port,
            bind="127.0.0.1",
            controller_bind="127.0.0.1",
            extra=f"persistence false\nlog_dest stderr\n{root}",
        )
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(text)
        self.log = tmp / "mosquitto.log"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stderr=self.log.open("wb"))
        wait_until(lambda: _port_open(self.controller_port) or self.proc.poll() is not None, 10, "mosquitto")
        assert self.proc.poll() is None, self.log.read_text()

    def controller_url(self) -> str:
        return f"mqtt://edge-controller:{PASSWORDS['edge-controller']}@127.0.0.1:{self.controller_port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def raw_http(port: int, head: str, body_parts=(), read_timeout: float = 10.0) -> tuple[int, bytes, int]:
    """Send a request by hand; (status, response bytes, body bytes sent before the server answered or closed)."""
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode())
        for part in body_parts:
            if select.select([s], [], [], 0)[0]:
                break  # the server answered (or closed) before the body was all there
            try:
                s.sendall(part)
            except OSError:
                break
            sent += len(part)
        deadline = time.monotonic() + read_timeout
        while b"\r\n\r\n" not in response and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, response, sent
