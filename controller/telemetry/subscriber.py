"""A lean MQTT 3.1.1 subscriber for the fleet's telemetry: one connection of its own, QoS 1.

paho's loop reads a packet with four or five small recv calls and writes each PUBACK with its own send; on this
kind of machine that caps one client at about 2,000 messages/s. This reader takes whatever the socket holds in one
recv (up to 256 KiB), parses every whole PUBLISH in it, hands them to the ingest in one batch, and answers all
their PUBACKs in one send. Clean session, keepalive pings, reconnect with jittered backoff (reset once a session has
subscribed); TLS and username from the broker URL. A PUBLISH over MAX_PACKET is acknowledged and skipped as it
streams in, never buffered and never a reason to drop the session. This connection carries no will: the controller's
MqttLink owns its presence. Everything else the controller says and hears still goes through its MqttLink.

PUBACKs go out when the batch's `done(True)` is called: the ingest calls it once the batch is committed, so a
controller killed with samples in memory has not acknowledged them. With `clean_session=False` (replicas) the broker
keeps the session, and redelivers what was not acknowledged to whoever resumes it: the replica itself after a
restart, or another replica draining it (`drain`). `done(False)` (the database refused the batch) drops the
connection, so the broker redelivers the batch after the reconnect instead of the controller losing it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

from protocol.link import BrokerAddress, refusal_fix

Done = Callable[[bool], None]

log = logging.getLogger(__name__)

RECV_BYTES = 256 << 10
MAX_PACKET = 2 << 20
CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}  # MQTT 3.1.1's CONNACK return codes
# After a read, pause up to GATHER_S before the next: the broker's next messages arrive meanwhile and are read, handed
# over and acknowledged together (per read, the wake-up, thread hand-off and system calls cost more than parsing).
# A pause after which nothing had come halves the next one (down to none below GATHER_MIN_S): a broker with a small
# in-flight window is waiting for PUBACKs, which wait for the commit, which waits for `on_idle`. One that brought
# messages doubles it again. It bounds how much later a sample is stored, not how many per second.
GATHER_S = 0.2
GATHER_MIN_S = 0.005


class Pacer:
    """The reader's pause after a read, adapted to whether pausing brought messages."""

    def __init__(self) -> None:
        self.pause = GATHER_S

    def paused(self, brought: bool) -> None:
        if brought:
            self.pause = min(GATHER_S, max(self.pause * 2, GATHER_MIN_S))
        else:
            self.pause = self.pause / 2 if self.pause / 2 >= GATHER_MIN_S else 0.0


def shown(topic_filter: str) -> str:
    """A filter as logged: a shared subscription's group is the replicas' secret (replicas/replication.py)."""
    if topic_filter.startswith("$share/"):
        return "$share/<group>/" + topic_filter.split("/", 2)[2]
    return topic_filter


def readable(sock: socket.socket) -> bool:
    """Whether a recv would return at once (bytes or the end of the connection)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


class TelemetrySubscriber:
    """Subscribes to `topic_filter` at QoS 1 and calls on_batch([(topic, payload), ...], done) from its own thread;
    done(True) acknowledges the batch (from any thread, once)."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        topic_filter: str,
        on_batch: Callable[[list[tuple[str, bytes]], Done], None],
        *,
        keepalive: int = 30,
        max_backoff: float = 30.0,
        will: tuple[str, bytes] | None = None,
        on_subscribed: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        clean_session: bool = True,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.topic_filter = topic_filter
        self.on_batch = on_batch
        self.keepalive = keepalive
        self.max_backoff = max_backoff
        self.will = will  # (topic, payload): retained, QoS 1, published by the broker if this connection dies
        self.on_subscribed = on_subscribed
        self.on_lost = on_lost  # called when an active subscription is lost
        self.on_idle = on_idle  # called when what was handed over is all the socket held: store it now
        self.clean_session = clean_session  # False: the broker keeps the session (and unacknowledged messages)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.initial_delay = (0.5, 1.5)
        self.next_delay = 0.0  # the wait before the next reconnect attempt
        self.sessions = 0  # sessions that reached SUBACK
        self.oversized = 0  # PUBLISH packets skipped for exceeding MAX_PACKET
        self._subscribed = False
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()  # PUBACKs come from the ingest's thread, pings from this one
        self._draining = False
        self._pending = 0  # batches handed over and not yet done (drain waits for them)
        self._thread = threading.Thread(target=self._run, name="telemetry-mqtt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reconnect(self) -> None:
        """End the current connection; the reader connects again (with the current client id)."""
        with self._send_lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    # -- the connection --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = random.uniform(*self.initial_delay)
        while not self._stop.is_set():
            self._subscribed = False
            try:
                self._session()
            except (OSError, ConnectionError, ValueError) as exc:
                if self._stop.is_set():
                    break
                if self.connected.is_set() or self.last_error is None:
                    log.warning("telemetry subscription to %s lost: %s; reconnecting", self.address, exc)
                self.last_error = str(exc)
            finally:
                was_up = self.connected.is_set()
                self.connected.clear()
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            if self.on_idle is not None:  # what the lost session handed over is stored now (not acknowledged)
                try:
                    self.on_idle()
                except Exception:
                    log.exception("on_idle handler failed")
            if self._subscribed:  # this session worked: the next outage starts the backoff again
                delay = random.uniform(*self.initial_delay)
            if was_up and self.on_lost and not self._stop.is_set():
                try:
                    self.on_lost()
                except Exception:
                    log.exception("on_lost handler failed")
            self.next_delay = delay
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.address.host, self.address.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.address.tls:
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=self.address.host)
        flags = 0x02 if self.clean_session else 0x00
        payload = _string(self.client_id)
        if self.will:
            flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            payload += _string(self.will[0]) + struct.pack(">H", len(self.will[1])) + self.will[1]
        if self.address.username:
            flags |= 0x80
            payload += _string(self.address.username)
            if self.address.password:
                flags |= 0x40
                payload += _string(self.address.password)
        body = _string("MQTT") + bytes([4, flags]) + struct.pack(">H", self.keepalive) + payload
        sock.sendall(_packet(0x10, body))
        return sock

    def _refusal(self, code: int) -> str:
        """A refused CONNACK in one line: the reason and what to do (wrong credentials, most often)."""
        reason = CONNACK_REFUSALS.get(code, f"CONNACK code {code}")
        return f"the broker refused the connection: {reason}; {refusal_fix(reason, self.client_id)}"

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with self._send_lock:
            sock.sendall(data)

    def _done(self, sock: socket.socket, acks: list[bytes]) -> Done:
        """The batch's completion: PUBACKs on the session that received it (a later session gets the batch again
        from the broker and acknowledges that copy), or, when it was not stored, the end of the connection."""
        with self._send_lock:
            self._pending += 1

        def done(ok: bool) -> None:
            with self._send_lock:
                self._pending -= 1
                if self._sock is not sock:
                    return
                try:
                    if ok:
                        if acks:
                            sock.sendall(b"".join(acks))
                    else:
                        log.warning("telemetry batch not stored; reconnecting so the broker delivers it again")
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the reader sees the connection end and reconnects

        return done

    def drain(self, idle_s: float = 1.0, timeout: float = 60.0) -> int:
        """Resume this client id's persistent session (a dead replica's), unsubscribe it, take every message the
        broker still holds for it (redelivered in-flight ones and the queued ones) until none arrived for `idle_s`
        and all were stored, then end the session for good; the number of messages taken. Runs in this thread."""
        self._draining = True
        self.keepalive = max(2, int(idle_s * 2))
        taken = [0]
        on_batch = self.on_batch

        def counting(batch: list[tuple[str, bytes]], done: Done) -> None:
            taken[0] += len(batch)
            on_batch(batch, done)

        self.on_batch = counting
        deadline = time.monotonic() + timeout
        try:
            self._session(idle_s=idle_s, deadline=deadline)
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        self.clean_session = True  # a clean connect discards the session and its subscription
        sock = self._connect()
        try:
            sock.settimeout(5)
            sock.recv(4)
            sock.sendall(b"\xe0\x00")
        finally:
            sock.close()
        return taken[0]

    def _session(self, idle_s: float | None = None, deadline: float | None = None) -> None:
        sock = self._sock = self._connect()
        sock.settimeout(0.2 if idle_s else max(1.0, self.keepalive / 2))
        last_message = time.monotonic()
        buffer = bytearray()
        subscribed = False
        skip = 0  # bytes still to come of an oversized PUBLISH being skipped
        last_sent = time.monotonic()
        pacer = Pacer()
        handed = False  # batches handed over since the last on_idle
        while not self._stop.is_set():
            if handed and self.on_idle is not None and not readable(sock):
                handed = False
                self.on_idle()
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:  # no traffic for a while: time for a keepalive ping
                data = None
            if idle_s is not None:
                now = time.monotonic()
                if subscribed and now - last_message >= idle_s and not self._pending:
                    self._send(sock, b"\xe0\x00")  # DISCONNECT: the session stays, without its subscription
                    return
                if deadline is not None and now > deadline:
                    raise TimeoutError("draining the telemetry session took too long")
            if data == b"":
                raise ConnectionError("the broker closed the connection")
            if data:
                if skip:
                    dropped = min(skip, len(data))
                    skip -= dropped
                    data = data[dropped:]
                buffer += data
            now = time.monotonic()
            if now - last_sent >= self.keepalive / 2:
                self._send(sock, b"\xc0\x00")  # PINGREQ
                last_sent = now
            oversized: list[int] = []
            messages, acks, control = self._parse(buffer, oversized)
            if oversized:
                self.oversized += len(oversized)
                skip += sum(oversized)
                log.warning("skipped %d telemetry packet(s) over %d bytes", len(oversized), MAX_PACKET)
            for kind, body in control:
                if kind == 0x20:  # CONNACK
                    if len(body) < 2 or body[1] != 0:
                        raise ConnectionError(self._refusal(body[1] if len(body) >= 2 else -1))
                    if self._draining:  # stop the session's share of new messages; keep what it holds
                        self._send(sock, _packet(0xA2, struct.pack(">H", 1) + _string(self.topic_filter)))
                    else:
                        self._send(sock, _packet(0x82, struct.pack(">H", 1) + _string(self.topic_filter) + b"\x01"))
                    last_sent = now
                elif kind == 0xB0 and self._draining:  # UNSUBACK
                    subscribed = True
                elif kind == 0x90 and not subscribed:  # SUBACK
                    if body[2:3] == b"\x80":
                        raise ConnectionError(f"the broker refused the subscription to {shown(self.topic_filter)}")
                    subscribed = self._subscribed = True
                    self.sessions += 1
                    self.connected.set()
                    self.last_error = None
                    log.info("telemetry subscription to %s active (%s)", self.address, shown(self.topic_filter))
                    if self.on_subscribed:
                        try:
                            self.on_subscribed()
                        except Exception:
                            log.exception("on_subscribed handler failed")
            if messages:
                last_message = now
                self.on_batch(messages, self._done(sock, acks))  # PUBACKs once the batch is stored
                handed = True
                if idle_s is None and pacer.pause and len(data or b"") < RECV_BYTES:  # a full read: more is waiting
                    time.sleep(pacer.pause)
                    pacer.paused(readable(sock))
            elif acks:  # oversized packets only
                self._send(sock, b"".join(acks))
            if acks:
                last_sent = now

    @staticmethod
    def _parse(
        buffer: bytearray, oversized: list[int] | None = None
    ) -> tuple[list[tuple[str, bytes]], list[bytes], list[tuple[int, bytes]]]:
        """Take every whole packet off the front of the buffer. A PUBLISH over MAX_PACKET is acknowledged once its
        topic and packet id are here, and taken off with what of it has arrived; how much of it is still to come
        is appended to `oversized` (without that list, such a packet is a ValueError)."""
        messages: list[tuple[str, bytes]] = []
        acks: list[bytes] = []
        control: list[tuple[int, bytes]] = []
        pos = 0
        size = len(buffer)
        view = memoryview(buffer)
        while pos + 2 <= size:
            first = buffer[pos]
            length, multiplier, i, complete = 0, 1, pos + 1, False
            while i < size and i - pos <= 4:
                byte = buffer[i]
                i += 1
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                if not byte & 0x80:
                    complete = True
                    break
            if not complete:
                if i - pos > 4:
                    raise ValueError("malformed remaining length")
                break  # the length itself is not all here yet
            end = i + length
            if length > MAX_PACKET:
                if oversized is None or first & 0xF0 != 0x30:
                    raise ValueError(f"packet of {length} bytes exceeds {MAX_PACKET}")
                if i + 2 > size:
                    break
                qos = (first >> 1) & 0x03
                header_end = i + 2 + ((buffer[i] << 8) | buffer[i + 1]) + (2 if qos else 0)
                if header_end > size:
                    break  # its topic and packet id are not all here yet
                if qos:
                    acks.append(b"\x40\x02" + bytes(view[header_end - 2 : header_end]))
                oversized.append(max(0, end - size))
                pos = min(end, size)
                continue
            if end > size:
                break
            kind = first & 0xF0
            if kind == 0x30:  # PUBLISH
                qos = (first >> 1) & 0x03
                topic_len = (buffer[i] << 8) | buffer[i + 1]
                topic = bytes(view[i + 2 : i + 2 + topic_len]).decode(errors="replace")
                start = i + 2 + topic_len
                if qos:
                    mid = bytes(view[start : start + 2])
                    start += 2
                    acks.append(b"\x40\x02" + mid)  # subscribed at QoS 1: the broker sends at most QoS 1
                messages.append((topic, bytes(view[start:end])))
            else:
                control.append((kind, bytes(view[i:end])))
            pos = end
        view.release()
        del buffer[:pos]
        return messages, acks, control
