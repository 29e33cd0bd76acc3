"""Leases in the database: work that one controller replica must do at a time (publishing desired states on
connect, telemetry retention) belongs to whoever holds the `leader` row, and each replica holds a `replica:<id>` row
while it lives. A holder renews every few seconds; a row whose `expires_at` has passed may be taken by anyone, in
one conditional UPDATE, so two replicas never both win. Times are the database's clock (PostgreSQL), so replicas on
machines whose clocks disagree still agree on who holds what. SQLite serves one process: it always holds every lease.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from controller.schema import leases

LEADER = "leader"
REPLICA = "replica:"  # + the replica's id: its membership (its telemetry session is adopted once this lapses)


class Leases:
    """Take, renew, release and list lease rows; each call is one short transaction."""

    def __init__(self, engine: Engine, owner: str, ttl_s: float) -> None:
        self.engine = engine
        self.owner = owner
        self.ttl_s = ttl_s
        self.shared = engine.dialect.name == "postgresql"  # replicas possible; SQLite is always one process

    def now(self, conn: Connection) -> float:
        if self.shared:
            return float(conn.execute(sa.text("SELECT extract(epoch from clock_timestamp())")).scalar_one())
        return time.time()

    def acquire(self, name: str) -> bool:
        """Take the lease, or renew it when this owner holds it; False while someone else's has not lapsed."""
        with self.engine.begin() as conn:
            now = self.now(conn)
            taken = conn.execute(
                leases.update()
                .where(leases.c.name == name, (leases.c.owner == self.owner) | (leases.c.expires_at < now))
                .values(owner=self.owner, expires_at=now + self.ttl_s)
            ).rowcount
            if taken:
                return True
            if conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first() is not None:
                return False
        try:  # no row yet: the first to insert it holds it
            with self.engine.begin() as conn:
                expires = self.now(conn) + self.ttl_s
                conn.execute(leases.insert().values(name=name, owner=self.owner, expires_at=expires))
            return True
        except sa.exc.IntegrityError:
            return False

    def renew(self, name: str) -> bool:
        """Extend a lease this owner holds; False when it lapsed and someone else took it (or it is gone)."""
        with self.engine.begin() as conn:
            now = self.now(conn)
            return bool(
                conn.execute(
                    leases.update()
                    .where(leases.c.name == name, leases.c.owner == self.owner)
                    .values(expires_at=now + self.ttl_s)
                ).rowcount
            )

    def release(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == self.owner))

    def expire(self, name: str) -> None:
        """Let this owner's lease lapse now (it stays, for another replica to take and act on)."""
        with self.engine.begin() as conn:
            query = leases.update().where(leases.c.name == name, leases.c.owner == self.owner)
            conn.execute(query.values(expires_at=0.0))

    def lapsed(self, prefix: str) -> list[str]:
        """Names starting with `prefix` whose lease has lapsed (their holder stopped renewing)."""
        with self.engine.connect() as conn:
            now = self.now(conn)
            query = sa.select(leases.c.name).where(leases.c.name.startswith(prefix), leases.c.expires_at < now)
            return list(conn.execute(query).scalars().all())

    def holders(self) -> dict[str, str]:
        """name -> owner of every lease that has not lapsed."""
        with self.engine.connect() as conn:
            now = self.now(conn)
            rows = conn.execute(sa.select(leases.c.name, leases.c.owner).where(leases.c.expires_at >= now)).all()
        return {name: owner for name, owner in rows}
