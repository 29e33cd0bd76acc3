"""Topic names, QoS and retain flags: `{prefix}/v1/devices/{device_id}/{kind}`, one level per device."""

from __future__ import annotations

from protocol.identifiers import valid_device_id
from protocol.limits import DEFAULT_PREFIX, TOPIC_VERSION

DEVICE_TOPIC_KINDS = (
    "presence",
    "state",
    "desired",
    "artifact/request",
    "artifact/chunk",
    "rpc/request",
    "rpc/response",
    "telemetry",
)

# QoS and retain flag per message kind. Chunks are QoS 1 so a lossy link resends instead of stalling a download.
QOS: dict[str, int] = {
    "presence": 1,
    "state": 1,
    "desired": 1,
    "artifact/request": 1,
    "artifact/chunk": 1,
    "rpc/request": 1,
    "rpc/response": 1,
    "telemetry": 1,
    "controller/presence": 1,
}
RETAINED = frozenset({"presence", "state", "desired", "controller/presence"})
PARSED_KEPT = 1 << 16  # topics whose parse is remembered (cleared when full: a flood of odd topics costs a re-parse)


class Topics:
    """Topic names under a configurable prefix: `{prefix}/v1/devices/{device_id}/{kind}`."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        prefix = prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#"):
            raise ValueError(f"invalid topic prefix {prefix!r}: must be non-empty and contain no '+' or '#'")
        self.prefix = prefix
        self.root = f"{prefix}/{TOPIC_VERSION}"
        self._parsed: dict[str, tuple[str, str] | None] = {}  # the controller parses each device's topics every second

    def device(self, device_id: str, kind: str) -> str:
        if not valid_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}: use letters, digits, '_', '-', '.' (max 64)")
        if kind not in DEVICE_TOPIC_KINDS:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.root}/devices/{device_id}/{kind}"

    def all_devices(self, kind: str) -> str:
        """Wildcard subscription for one kind across the fleet (controller side)."""
        return f"{self.root}/devices/+/{kind}"

    @property
    def controller_presence(self) -> str:
        return f"{self.root}/controller/presence"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """Split a device topic into (device_id, kind); None when the topic is not one of ours."""
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        if len(self._parsed) >= PARSED_KEPT:
            self._parsed.clear()
        parsed = self._parsed[topic] = self._parse(topic)
        return parsed

    def _parse(self, topic: str) -> tuple[str, str] | None:
        head = f"{self.root}/devices/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :]
        device_id, _, kind = rest.partition("/")
        if kind not in DEVICE_TOPIC_KINDS or not valid_device_id(device_id):
            return None
        return device_id, kind
