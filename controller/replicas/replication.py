"""Controller replicas sharing one PostgreSQL database and one broker: shared-subscription topic filters, the leader
lease (work done once: desired states on connect, retention) and the adoption of a dead replica's telemetry session.

Each replica holds a membership lease `replica:<id>` and consumes telemetry through a persistent MQTT session named
after its id. When a replica dies its lease lapses; another replica takes the lease, resumes the dead session
(the broker redelivers what the dead one had not acknowledged, plus what it queued since), stores it, and ends the
session. On SQLite (one process) nothing is shared: plain filters, always the leader, no thread.

The shared-subscription group is a secret the replicas share and devices never see (an HMAC of the controller's broker
password): a device that joins a group it can name receives its share of nothing but its own topics, so a group it can
guess must never be the replicas' group. Mosquitto 2.0's acl_file does not check subscriptions, so joining cannot be
refused on the broker side; see docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.replicas.leases import LEADER, REPLICA, Leases

log = logging.getLogger(__name__)

LEASE_TTL_S = 10.0  # a lease not renewed for this long (by the database's clock) may be taken by another replica
RENEW_S = 2.0  # how often a replica renews its leases and looks for dead replicas


def new_replica_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:24] or "host"
    return f"{host}-{uuid.uuid4().hex[:8]}"


def share_group(name: str, secret: str | None) -> str:
    """The replicas' shared-subscription group: `name` plus an HMAC of it under the secret they share (the broker
    password), so only a holder of the secret can name it; `name` alone without a secret."""
    if not secret:
        return name
    digest = hmac.new(secret.encode(), f"edgefleet share group {name}".encode(), hashlib.sha256).hexdigest()
    return f"{name}-{digest[:32]}"


class Replication:
    """Set `on_leader` (called in this object's thread when this replica becomes the leader), `adopt` (called with a
    dead replica's id, in a thread of its own) and `on_renamed` (this replica was declared dead while it lived: it
    continues under a new id) before start()."""

    def __init__(
        self,
        engine: Engine,
        topic_root: str,
        replica_id: str | None = None,
        *,
        secret: str | None = None,
        ttl_s: float = LEASE_TTL_S,
        renew_s: float = RENEW_S,
    ) -> None:
        self.enabled = engine.dialect.name == "postgresql"
        self.replica_id = replica_id or new_replica_id()
        self.name = "edge-controller-" + re.sub(r"[^A-Za-z0-9_-]", "_", topic_root)  # no '/', '+', '#' in a group
        self.group = share_group(self.name, secret)
        if self.enabled and secret is None:
            log.warning(
                "the controller logs in to the broker without a password: its shared-subscription group %s is one a "
                "device can guess and join, dropping a share of every device's messages; give the broker URL a user "
                "and --broker-password-file",
                self.group,
            )
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.leases = Leases(engine, self.replica_id, ttl_s)
        self.on_leader: Callable[[], None] | None = None
        self.adopt: Callable[[str], None] | None = None
        self.on_renamed: Callable[[str], None] | None = None
        self.adopted = 0  # dead replicas' sessions drained here
        self._leader_until = 0.0  # monotonic: this replica is the leader until then (renewed well before)
        self._adopting: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replication", daemon=True)

    # -- what the rest of the controller asks ----------------------------------------------------------------------

    def shared(self, topic_filter: str) -> str:
        """The filter every replica subscribes to so that each message goes to one of them."""
        return f"$share/{self.group}/{topic_filter}" if self.enabled else topic_filter

    def session_id(self, replica_id: str | None = None) -> str:
        """The MQTT client id of a replica's persistent telemetry session."""
        return f"{self.name}-{replica_id or self.replica_id}-telemetry"  # not the group: client ids can be seen

    def is_leader(self) -> bool:
        return not self.enabled or time.monotonic() < self._leader_until

    def others_alive(self) -> bool:
        """Whether another replica holds its membership now (then this one stopping is no controller outage)."""
        if not self.enabled:
            return False
        try:
            mine = REPLICA + self.replica_id
            return any(name.startswith(REPLICA) and name != mine for name in self.leases.holders())
        except SQLAlchemyError:
            return False

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        self.leases.acquire(REPLICA + self.replica_id)
        self._thread.start()

    def stop(self) -> None:
        """Give up the leases: the leader lease to whoever asks next, and the membership expired at once, so another
        replica (or the next one to start) drains what the broker still holds for this replica's session."""
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            if self._leader_until:
                self.leases.release(LEADER)
            self.leases.expire(REPLICA + self.replica_id)
        except SQLAlchemyError as exc:
            log.warning("could not give up this replica's leases: %s", str(exc).splitlines()[0])
        self._leader_until = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._tick(started)
            except SQLAlchemyError as exc:
                log.warning("replica leases: %s", str(exc).splitlines()[0])
            self._stop.wait(max(0.0, self.renew_s - (time.monotonic() - started)))

    def _tick(self, started: float) -> None:
        with self.leases.connection() as conn:  # one connection, a statement per lease
            self._renew_membership(conn)
            self._lead(started, conn)
            for name in self.leases.lapsed(REPLICA, conn):
                dead = name[len(REPLICA) :]
                if dead not in self._adopting and self.leases.acquire(name, conn):
                    self._adopting.add(dead)
                    threading.Thread(target=self._adopt, args=(dead, name), name=f"adopt-{dead}", daemon=True).start()
            for dead in list(self._adopting):  # held while the drain runs
                self.leases.renew(REPLICA + dead, conn)

    def _renew_membership(self, conn: Connection) -> None:
        if self.leases.renew(REPLICA + self.replica_id, conn):
            return
        # declared dead (a long pause): another replica drains the old session; this one continues under a new id
        old = self.replica_id
        self.replica_id = self.leases.owner = new_replica_id()
        log.warning("replica %s lost its membership lease; continuing as %s", old, self.replica_id)
        self._leader_until = 0.0
        self.leases.acquire(REPLICA + self.replica_id, conn)
        if self.on_renamed:
            self.on_renamed(self.replica_id)

    def _lead(self, started: float, conn: Connection) -> None:
        was_leader = self.is_leader()
        if not self.leases.acquire(LEADER, conn):
            if was_leader:
                log.warning("replica %s is no longer the leader", self.replica_id)
            self._leader_until = 0.0
            return
        # valid locally for less than the TTL, counted from before the renewal: it lapses here first
        self._leader_until = started + self.ttl_s - self.renew_s
        if not was_leader:
            log.info("replica %s is now the leader (desired states, retention)", self.replica_id)
            if self.on_leader:
                try:
                    self.on_leader()
                except Exception:
                    log.exception("taking over as the leader failed")

    def _adopt(self, dead: str, name: str) -> None:
        try:
            if self.adopt:
                self.adopt(dead)
            self.leases.release(name)
            self.adopted += 1
        except Exception as exc:  # the lease lapses again and someone retries
            log.warning("could not drain the telemetry session of replica %s: %s", dead, exc)
        finally:
            self._adopting.discard(dead)
