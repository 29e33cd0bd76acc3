"""The embedded broker's topic ACL (amqtt topic plugin): with a password file, each device (username = device id) may
publish and receive only its own topics, in the direction the protocol gives them (controller/broker/acl.py), plus
the controller's presence; the controller's internal user may use everything. Without one the embedded broker is
for a single host and anonymous (the controller says so at start)."""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin

from controller.broker.acl import DEVICE_READS, DEVICE_WRITES


class DeviceTopics(BaseTopicPlugin):
    @dataclass
    class Config:
        topic_root: str = "edge/v1"
        internal_user: str = ""

    async def topic_filtering(self, *, session=None, topic: str | None = None, action: Action | None = None) -> bool:
        config = self.context.config
        user = session.username if session is not None else None
        if not user or not topic:
            return False
        if config.internal_user and user == config.internal_user:
            return True
        own = f"{config.topic_root}/devices/{user}/"
        if action == Action.PUBLISH:
            return topic in {own + kind for kind in DEVICE_WRITES}
        return topic in {own + kind for kind in DEVICE_READS} or topic == f"{config.topic_root}/controller/presence"
