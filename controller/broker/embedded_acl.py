"""The embedded broker's access control (amqtt plugins). Each device may publish and receive only its own topics, in
the direction the protocol gives them (controller/broker/acl.py), plus the controller's presence; the controller's
internal user (a password made at start, held in memory) may use everything, `$share` groups included.

Who a device is: with a password file, its user name (PasswordFileAuth checked the password). Without one, the
controller's embedded broker still takes anonymous clients (the quickstart's agents log in with nothing), and each is
confined by its MQTT client id, which the agent sets to its device id (`by_client_id`): a local process can read or
write no other device's topics, but it can still take a device's client id over; only a password file prevents that."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from controller.broker.acl import DEVICE_READS, DEVICE_WRITES
from protocol.identifiers import valid_device_id


class AnonymousOrInternal(BaseAuthPlugin):
    """amqtt auth plugin without a password file: every client is let in, except one that names the controller's
    internal user without its password (so the user name alone never brings the controller's rights)."""

    @dataclass
    class Config:
        internal_user: str = ""
        internal_password: str = ""

    async def authenticate(self, *, session) -> bool:
        config = self.context.config
        if (session.username or "") != config.internal_user:
            return True
        return hmac.compare_digest((session.password or "").encode(), config.internal_password.encode())


class DeviceTopics(BaseTopicPlugin):
    @dataclass
    class Config:
        topic_root: str = "edge/v1"
        internal_user: str = ""
        by_client_id: bool = False  # no password file: a client is the device its client id names

    async def topic_filtering(self, *, session=None, topic: str | None = None, action: Action | None = None) -> bool:
        config = self.context.config
        if session is None or not topic:
            return False
        if config.internal_user and session.username == config.internal_user:
            return True  # the auth plugin refused this name without the controller's password
        device = session.client_id if config.by_client_id else session.username
        if not device or not valid_device_id(device):
            return False
        own = f"{config.topic_root}/devices/{device}/"
        if action == Action.PUBLISH:
            return topic in {own + kind for kind in DEVICE_WRITES}
        return topic in {own + kind for kind in DEVICE_READS} or topic == f"{config.topic_root}/controller/presence"
