"""The embedded MQTT broker (amqtt, MQTT 3.1.1) run in its own thread, so the controller needs nothing installed."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from pathlib import Path

from protocol.link import BrokerAddress

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    pass


class MqttFiveAttempt(logging.Filter):
    """amqtt reads an MQTT 5 CONNECT as a broken 3.1.1 one and warns twice; every client of ours then retries with
    3.1.1 and connects, so say that once at INFO instead of two alarming warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("Invalid connection from"):  # the reason follows in its own record
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if "Will flag set, but will topic/message not present" in text:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "a client's CONNECT was not MQTT 3.1.1 (an MQTT 5 client falls back): %s", (text,)
        return True


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedBroker:
    """amqtt in a background event loop. Clients must speak MQTT 3.1.1 (agents fall back automatically). With a
    `password_file` (mosquitto_passwd format) every client must log in as one of its users, anonymous clients are
    refused, and each device is confined to its own topics. Without one and with `confine_anonymous` (the
    controller's broker), anonymous clients are let in but each is confined to the topics of the device its client id
    names. Either way the controller connects with a credential of its own made at start (`address`), the only one
    with rights over every device. A bare broker (neither) is open to all: the tests' and benches' stand-in."""

    INTERNAL_USER = "edge-controller-internal"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        password_file: Path | None = None,
        topic_root: str = "edge/v1",
        confine_anonymous: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.password_file = password_file
        self.topic_root = topic_root  # the devices' topics, for the ACL
        self.confine_anonymous = confine_anonymous and password_file is None
        secured = password_file is not None or self.confine_anonymous
        self._internal_password = secrets.token_urlsafe(24) if secured else ""  # in memory only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None

    @property
    def url(self) -> str:
        """Where it listens (never with credentials: this is what gets logged)."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def address(self) -> BrokerAddress:
        """How the controller connects: with its internal credential when the broker has an ACL."""
        if not self._internal_password:
            return BrokerAddress(self.host, self.port)
        return BrokerAddress(self.host, self.port, False, self.INTERNAL_USER, self._internal_password)

    def _auth_plugins(self) -> dict:
        if self.confine_anonymous:
            internal = {"internal_user": self.INTERNAL_USER, "internal_password": self._internal_password}
            acl = {"topic_root": self.topic_root, "internal_user": self.INTERNAL_USER, "by_client_id": True}
            return {
                "controller.broker.embedded_acl.AnonymousOrInternal": internal,
                "controller.broker.embedded_acl.DeviceTopics": acl,
            }
        if self.password_file is None:
            return {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        from controller.broker.passwords import load_password_file

        load_password_file(self.password_file)  # a file it cannot use stops the start with the reason
        config = {
            "password_file": str(self.password_file),
            "internal_user": self.INTERNAL_USER,
            "internal_password": self._internal_password,
        }
        acl = {"topic_root": self.topic_root, "internal_user": self.INTERNAL_USER}
        return {
            "controller.broker.passwords.PasswordFileAuth": config,
            "controller.broker.embedded_acl.DeviceTopics": acl,
        }

    def start(self, timeout: float = 10.0) -> None:
        if not port_free(self.host, self.port):
            raise BrokerStartError(
                f"cannot start the embedded broker: {self.host}:{self.port} is already in use "
                f"(another broker running? use --broker mqtt://{self.host}:{self.port} to use it, "
                "or --broker embedded:PORT for another port)"
            )
        if self.password_file is not None:
            from controller.broker.passwords import PasswordFileError

            try:
                self._auth_plugins()
            except PasswordFileError as exc:
                raise BrokerStartError(str(exc)) from None
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, errors), name="embedded-broker", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise BrokerStartError("the embedded broker did not start in time")
        if errors:
            raise BrokerStartError(f"the embedded broker failed to start: {errors[0]}")
        log.info("embedded MQTT broker listening on %s (%s)", self.url, self.describe())

    def describe(self) -> str:
        """Who may connect and use which topics, for the start's log line."""
        if self.password_file:
            return f"password file {self.password_file}, each device confined to its own topics"
        if self.confine_anonymous:
            return (
                f"anonymous per client id, on {self.host} only: each client may use only the topics of the device its "
                "client id names, but any local process can take a device's client id over; to require passwords, "
                "give --broker-users-file (mosquitto_passwd format)"
            )
        return "anonymous clients allowed, no topic ACL: any local process can act as any device"

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        from amqtt.broker import Broker

        amqtt_log = logging.getLogger("amqtt.broker")
        if not any(isinstance(f, MqttFiveAttempt) for f in amqtt_log.filters):
            amqtt_log.addFilter(MqttFiveAttempt())

        async def main() -> None:
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 1000}},
                "plugins": self._auth_plugins(),
            }
            broker = self._broker = Broker(config)
            try:
                await broker.start()
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._stopped = asyncio.Event()
            await self._stopped.wait()
            await broker.shutdown()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)
