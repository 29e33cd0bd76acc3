"""A device's last-seen time refreshed by any message it sends (telemetry, artifact requests, RPC answers), not only
by presence and state: an online device that only reports telemetry must not look minutes stale."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.db.schema import devices

log = logging.getLogger(__name__)

REFRESH_S = 15.0  # at most one write per device per this many seconds, however many messages it sends
FLUSH_S = 1.0  # the due devices are written together at most this often (a transaction per batch cost more than it)


class LastSeen:
    """Throttled `last_seen` updates: one UPDATE per batch for the devices not refreshed in the last `every` s."""

    def __init__(self, engine: Engine, every: float = REFRESH_S, flush_s: float = FLUSH_S) -> None:
        self.engine = engine
        self.every = every
        self.flush_s = flush_s
        self._written: dict[str, float] = {}
        self._due: set[str] = set()
        self._flushed = 0.0
        self._lock = threading.Lock()

    def saw(self, device_ids: Iterable[str]) -> int:
        """Record that these devices just sent something; how many rows were written (the due ones, together, once
        `flush_s` has passed since the last write; a device's first message is written at once)."""
        now = time.time()
        with self._lock:
            written = self._written
            fresh = False
            for d in set(device_ids):
                seen = written.get(d)
                if seen is None or now - seen >= self.every:
                    fresh = fresh or seen is None
                    written[d] = now
                    self._due.add(d)
            if not self._due or (not fresh and now - self._flushed < self.flush_s):
                return 0
            due, self._due, self._flushed = sorted(self._due), set(), now
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    devices.update().where(devices.c.id.in_(due), devices.c.last_seen < now).values(last_seen=now)
                )
        except SQLAlchemyError as exc:  # liveness is best effort: never lose the message over it
            log.warning("could not refresh last seen of %s: %s", ", ".join(sorted(due)), str(exc).splitlines()[0])
        return len(due)
