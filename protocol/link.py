"""One paho-mqtt connection used by agent and controller: resubscribes on every connect, speaks MQTT 5 where the
broker does and falls back to 3.1.1 where it refuses v5, and never lets a bad message kill its thread."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 3.0
REFUSED_MAX_BACKOFF_S = 60.0  # a broker refusing our credentials is asked again at most this often (no log flood)
CREDENTIALS_FIX = (
    "check the user name (mqtt://USER@HOST, or the agent's `username`) and the password (--broker-password-file, "
    "or the agent's `password_file`) against the broker's password file"
)
MqttProtocol = Literal["auto", "5", "3.1.1"]
MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is: parsed from mqtt://[user:pass@]host[:port] or mqtts://..."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line or a status

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        if "://" not in url:
            url = f"mqtt://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, tls, user, password)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class _Client(mqtt.Client):
    """paho's client, remembering why its last connection attempt failed: paho's on_connect_fail gets no reason."""

    last_connect_error: BaseException | None = None

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        return sock


def refusal_fix(reason: str, client_id: str) -> str:
    """What to do about a broker's refusal (CONNACK reason), in words an operator acts on."""
    text = reason.lower()
    if "authori" in text or "user name" in text or "password" in text:
        return CREDENTIALS_FIX
    if "identifier" in text:
        return f"the broker refuses the client id {client_id!r}; check its client id rules (or the device id)"
    if "banned" in text or "quota" in text:
        return "the broker turns this client away; check the broker's log"
    return "check the broker's log"


def refusal_backoff(refusals: int, min_delay: float, max_delay: float = REFUSED_MAX_BACKOFF_S) -> float:
    """Seconds before the next attempt after `refusals` refused connections in a row: doubling from `min_delay`,
    capped (what paho waits once the link stops resetting its delay on each refusal)."""
    return float(min(min_delay * 2 ** max(refusals - 1, 0), max_delay))


def describe_connect_error(exc: BaseException | None) -> str:
    """Why a TCP/TLS connection to the broker failed, in words an operator acts on."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running on that host and port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer (timed out; a firewall or a wrong host?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return "connection failed"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    """A supervised paho client. Handlers get (topic, payload); exceptions in them are logged, never raised."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        subscriptions: list[tuple[str, int]],
        on_message: MessageHandler,
        on_connected: Callable[[], None] | None = None,
        will: Will | None = None,
        protocol: MqttProtocol = "auto",
        tls: TlsFiles | None = None,
        keepalive: int = 30,
        max_backoff: float = 30.0,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connected = on_connected
        self.will = will
        self.protocol_setting = protocol
        self.tls = tls
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.failed_attempts = 0  # connection attempts failed in a row (reset on connect)
        self.refusals = 0  # CONNACKs refusing the connection in a row (credentials, ...): backed off up to 60 s
        self._min_delay = 1.0
        self._max_delay = max_backoff
        self._lock = threading.Lock()
        self._stopping = False
        self._v5 = protocol in ("auto", "5")
        self._unanswered: object | None = None  # the socket whose CONNECT has had no CONNACK yet
        self._client = self._build_client()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def is_v5(self) -> bool:
        return self._v5

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting (backoff) until stop()."""
        self._client.connect_async(self.address.host, self.address.port, self.keepalive)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, final: tuple[str, bytes, int, bool] | None = None) -> None:
        """Publish an optional last message (e.g. offline presence), then disconnect cleanly."""
        self._stopping = True
        client = self._client
        if final and self.connected.is_set():
            info = client.publish(final[0], final[1], qos=final[2], retain=final[3])
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2.0)
        client.disconnect()
        client.loop_stop()
        self.connected.clear()

    # -- publishing ----------------------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        response_topic: str | None = None,
        correlation_id: str | None = None,
        expiry_s: int | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; the v5 properties are an addition only (the body already carries reply topic and id)."""
        props = None
        if self._v5 and (response_topic or correlation_id or expiry_s):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_id:
                props.CorrelationData = correlation_id.encode()
            if expiry_s:
                props.MessageExpiryInterval = expiry_s
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    # -- paho plumbing -------------------------------------------------------------------------------------------

    def _build_client(self) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto)
        client.max_inflight_messages_set(64)
        self._jitter_backoff(client)
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls or self.tls:
            files = self.tls or TlsFiles()
            client.tls_set(
                ca_certs=files.ca_file,
                certfile=files.cert_file,
                keyfile=files.key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.will:
            client.will_set(self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_connect_fail = self._on_connect_fail
        return client

    def _jitter_backoff(self, client: mqtt.Client) -> None:
        """Exponential backoff (paho doubles the delay per failed try) scaled by a random factor per device, so a
        fleet that lost its broker does not reconnect in lockstep when it comes back."""
        factor = random.uniform(0.5, 1.5)
        self._min_delay, self._max_delay = factor, self.max_backoff * min(factor, 1.0)
        client.reconnect_delay_set(min_delay=self._min_delay, max_delay=self._max_delay)  # type: ignore[arg-type]

    def next_delay(self) -> float:
        """Seconds until paho's next attempt after `failed_attempts` failures in a row: it doubles its delay per wait
        and, after the first failure, waits twice (once before leaving its first-connect loop)."""
        n = max(self.failed_attempts, 1)
        if n == 1:
            return min(self._min_delay, self._max_delay) + min(2 * self._min_delay, self._max_delay)
        return float(min(self._min_delay * 2**n, self._max_delay))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """Each failed attempt logged with its reason and the wait before the next (paho keeps the backoff growing:
        re-jittering here would reset it to its minimum on every failure)."""
        self.failed_attempts += 1
        reason = describe_connect_error(getattr(client, "last_connect_error", None))
        self.last_error = f"cannot connect to broker {self.address}: {reason}"
        log.warning("%s; attempt %d failed, next in %.1fs", self.last_error, self.failed_attempts, self.next_delay())

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        self._unanswered = None
        if reason_code.is_failure:
            self.last_error = f"broker {self.address} refused the connection: {reason_code}"
            if self._v5 and self.protocol_setting == "auto" and "protocol version" in str(reason_code).lower():
                log.info("broker %s does not speak MQTT 5; falling back to 3.1.1", self.address)
                threading.Thread(target=self._downgrade, daemon=True).start()
            else:
                self._refused(client, str(reason_code))
            return
        self.last_error = None
        self.failed_attempts = 0
        self.refusals = 0
        if self.subscriptions:
            client.subscribe(self.subscriptions)
        self.connected.set()
        log.info("connected to %s (MQTT %s)", self.address, "5" if self._v5 else "3.1.1")
        if self.on_connected:
            try:
                self.on_connected()
            except Exception:
                log.exception("on_connected handler failed")

    def _refused(self, client: mqtt.Client, reason: str) -> None:
        """A refusal (wrong credentials, most often) is asked again with a doubling wait up to 60 s, each logged
        once with what to do: never once a second for ever."""
        self.failed_attempts += 1
        self.refusals += 1
        if self.refusals == 1:  # from now on paho doubles its wait up to the cap (reset only by a working connect)
            client.reconnect_delay_set(min_delay=self._min_delay, max_delay=REFUSED_MAX_BACKOFF_S)  # type: ignore[arg-type]
        delay = refusal_backoff(self.refusals, self._min_delay)
        fix = refusal_fix(reason, self.client_id)
        log.warning("%s; %s; attempt %d failed, next in %.1fs", self.last_error, fix, self.refusals, delay)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """Disable Nagle (request/response and chunk round trips otherwise wait ~40 ms for delayed ACKs); and since
        some 3.1.1-only brokers never answer a v5 CONNECT (amqtt with a will), no CONNACK in time means downgrade."""
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._v5 and self.protocol_setting == "auto":
            self._unanswered = sock
            threading.Timer(CONNACK_TIMEOUT_S, self._check_connack, args=(client,)).start()

    def _check_connack(self, client: mqtt.Client) -> None:
        """Downgrade only when the latest CONNECT went unanswered: a broker that answered and then went away (a
        restart, refused connections since) speaks MQTT 5 all the same."""
        unanswered = self._unanswered is not None and not self.connected.is_set()
        if client is self._client and self._v5 and unanswered and not self._stopping:
            log.info("no CONNACK to MQTT 5 from %s in %.0fs; falling back to 3.1.1", self.address, CONNACK_TIMEOUT_S)
            self._downgrade()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:  # a working connection lost: the backoff starts again (jittered); a refused one keeps growing
            self._jitter_backoff(client)
        if was and not self._stopping:
            self.last_error = f"lost connection to broker {self.address}: {reason_code}"
            log.warning("%s; reconnecting with backoff", self.last_error)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:  # paho hands over bytes (typed bytes | bytearray): no copy
            self.on_message(message.topic, cast(bytes, message.payload))
        except Exception:
            log.exception("dropped message on %s: handler failed", message.topic)

    def _downgrade(self) -> None:
        """Rebuild the client for MQTT 3.1.1 (paho fixes the protocol per client) and reconnect."""
        with self._lock:
            if not self._v5:
                return
            old = self._client
            old.loop_stop()
            old.disconnect()
            self._v5 = False
            jitter = random.uniform(0, 0.2)
            self._client = self._build_client()
            if not self._stopping:
                threading.Timer(jitter, self.start).start()
