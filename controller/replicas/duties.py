"""The Fleet's controller presence and its duties as one of several replicas (mixed into controller.fleet.link.Fleet):
saying online once both connections are up, taking over as the leader, draining a dead replica's telemetry session,
keeping the retained presence online while any replica lives (single-process controllers never call the latter)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from controller import __version__
from controller.replicas.retained import read_retained
from controller.telemetry.subscriber import TelemetrySubscriber
from protocol import ControllerPresence, DeviceState, ProtocolError, decode

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from controller.db.database import Database
    from controller.replicas.replication import Replication
    from protocol import Topics
    from protocol.link import MqttLink

log = logging.getLogger(__name__)


class ReplicaDuties:
    """What the Fleet provides to these methods."""

    db: Database
    link: MqttLink
    topics: Topics
    telemetry_link: TelemetrySubscriber
    replication: Replication
    publish_desired: Callable[[str], Any]
    _on_state: Callable[[str, DeviceState], None]
    _on_telemetry: Callable[..., None]

    def _announce(self) -> None:
        """Retained online presence, once both connections are up: agents send telemetry only while the controller
        is online (else they keep it on disk), so it must not say so before the telemetry subscription is active.
        Either connection's will takes it back to offline."""
        if self.link.connected.is_set() and self.telemetry_link.connected.is_set():
            online = ControllerPresence(online=True, version=__version__)
            self.link.publish(self.topics.controller_presence, online.encode(), 1, retain=True)

    def _telemetry_lost(self) -> None:
        """The telemetry subscription is gone: agents must keep their samples on disk until it is back (unless other
        replicas take the telemetry)."""
        if self.link.connected.is_set() and not self.replication.enabled:
            offline = ControllerPresence(online=False, version=__version__)
            self.link.publish(self.topics.controller_presence, offline.encode(), 1, retain=True)

    def _take_over(self) -> None:
        """Now the leader: publish every desired state (what a leader does on connect) and catch up on the retained
        device states, which the shared state subscription does not deliver."""
        if self.link.connected.is_set():
            for device_id in self.db.deployed_devices():
                self.publish_desired(device_id)
        threading.Thread(target=self._sync_states, name="state-sync", daemon=True).start()

    def _sync_states(self) -> None:
        try:
            retained = read_retained(self.link.address, self.topics.all_devices("state"))
        except ConnectionError as exc:
            log.warning("could not read the devices' retained states: %s", exc)
            return
        for topic, payload in retained:
            parsed = self.topics.parse(topic)
            if parsed is None or not payload:
                continue
            try:
                self._on_state(parsed[0], decode(DeviceState, payload))
            except ProtocolError as exc:
                log.warning("dropped retained state of %s: %s", parsed[0], exc)
        log.info("caught up on %d retained device state(s)", len(retained))

    def _adopt(self, dead_replica: str) -> None:
        """Resume a dead replica's telemetry session, store what the broker held for it, and end the session."""
        drain = TelemetrySubscriber(
            self.link.address,
            self.replication.session_id(dead_replica),
            self.telemetry_link.topic_filter,
            self._on_telemetry,
            on_idle=self.telemetry_link.on_idle,
            clean_session=False,
        )
        taken = drain.drain()
        log.info("drained the telemetry session of dead replica %s: %d message(s)", dead_replica, taken)

    def _renamed(self, replica_id: str) -> None:
        """This replica was declared dead while it lived: its telemetry continues in a session of its new id."""
        self.telemetry_link.client_id = self.replication.session_id(replica_id)
        self.telemetry_link.reconnect()

    def _on_controller_presence(self, payload: bytes) -> None:
        """An offline on the controller presence while this replica's two connections are up (a dead replica's will,
        or this one's own offline from a telemetry loss, resent by paho after the reconnect that followed it) is
        answered with online: agents would otherwise keep their telemetry on disk for good."""
        try:
            presence = decode(ControllerPresence, payload) if payload else None
        except ProtocolError:
            return
        up = self.link.connected.is_set() and self.telemetry_link.connected.is_set()
        if presence is not None and not presence.online and up:
            log.info("the controller presence says offline (a replica's will, or a stale message resent after a "
                     "reconnect); this one (%s) is serving: online again", self.replication.replica_id)  # fmt: skip
            online = ControllerPresence(online=True, version=__version__)
            self.link.publish(self.topics.controller_presence, online.encode(), 1, retain=True)
