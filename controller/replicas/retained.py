"""Reads the retained messages under a topic filter once (a short-lived MQTT connection of its own): the replica
taking over as the leader catches up on the devices' retained state, which a shared subscription never delivers."""

from __future__ import annotations

import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.link import BrokerAddress


def read_retained(
    address: BrokerAddress, topic_filter: str, quiet_s: float = 1.0, timeout: float = 15.0
) -> list[tuple[str, bytes]]:
    """The retained (topic, payload) pairs under the filter: those that arrived until `quiet_s` passed without one
    after the subscription was granted; raises ConnectionError when the broker cannot be reached in time."""
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    last = [time.monotonic()]

    def on_message(client, userdata, message) -> None:
        if message.retain:
            got.append((message.topic, bytes(message.payload)))
            last[0] = time.monotonic()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(topic_filter, 1)

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"edge-controller-sync-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311
    )
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_message, client.on_connect, client.on_subscribe = on_message, on_connect, on_subscribe
    deadline = time.monotonic() + timeout
    try:
        client.connect(address.host, address.port, keepalive=30)
        client.loop_start()
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise ConnectionError(f"no subscription to {topic_filter} on {address} within {timeout:g}s")
        while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
    except OSError as exc:
        raise ConnectionError(f"cannot reach broker {address}: {exc}") from None
    finally:
        client.disconnect()
        client.loop_stop()
    return list(got)
