"""A device's last-seen time refreshed by any message it sends (telemetry, artifact requests, RPC answers), not only
by presence and state: an online device that only reports telemetry must not look minutes stale."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.schema import devices

log = logging.getLogger(__name__)

REFRESH_S = 5.0  # at most one write per device per this many seconds, however many messages it sends


class LastSeen:
    """Throttled `last_seen` updates: one UPDATE per batch for the devices not refreshed in the last `every` s."""

    def __init__(self, engine: Engine, every: float = REFRESH_S) -> None:
        self.engine = engine
        self.every = every
        self._written: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, device_ids: Iterable[str]) -> int:
        """Record that these devices just sent something; how many rows were due for a write."""
        now = time.time()
        with self._lock:
            due = [d for d in set(device_ids) if now - self._written.get(d, 0.0) >= self.every]
            for device_id in due:
                self._written[device_id] = now
        if not due:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    devices.update().where(devices.c.id.in_(due), devices.c.last_seen < now).values(last_seen=now)
                )
        except SQLAlchemyError as exc:  # liveness is best effort: never lose the message over it
            log.warning("could not refresh last seen of %s: %s", ", ".join(sorted(due)), str(exc).splitlines()[0])
        return len(due)
